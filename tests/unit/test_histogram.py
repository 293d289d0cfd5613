from exporter.daemon.histogram import HistogramAccumulator


def test_histogram_buckets_are_cumulative_and_keep_sum_and_count():
    acc = HistogramAccumulator((0.1, 1.0, float("inf")))
    for value in (0.05, 0.5, 0.7, 3.0):
        acc.observe(value)
    frozen = acc.freeze()
    assert frozen.counts == (1, 3, 4)
    assert frozen.count == 4
    assert frozen.total == 4.25


def test_a_value_on_a_bucket_bound_falls_in_that_bucket():
    acc = HistogramAccumulator((0.1, 1.0, float("inf")))
    acc.observe(0.1)
    assert acc.freeze().counts == (1, 1, 1)
