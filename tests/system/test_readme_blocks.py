"""Which README text the system test runs as install steps (readme_blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from readme_blocks import install_script, section_blocks

MARKDOWN = """\
## Install

    not this one: another section

#### Step

Text with `inline` code.

    apt-get install -y thing \\
        other-thing

    systemctl start thing
- a list item

```
output, not a step
```

##### Sub-step

    only under the sub-step

#### Next
"""


def test_a_section_is_its_indented_blocks_up_to_the_next_heading_of_any_level() -> None:
    assert section_blocks(MARKDOWN, "#### Step") == [
        "apt-get install -y thing \\\n    other-thing\n\nsystemctl start thing"
    ]
    assert section_blocks(MARKDOWN, "##### Sub-step") == ["only under the sub-step"]
    assert section_blocks(MARKDOWN, "#### Next") == []


def test_an_unknown_heading_or_a_section_without_steps_is_an_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(MARKDOWN)
    with pytest.raises(LookupError, match="Missing"):
        install_script("#### Missing", readme=readme)
    with pytest.raises(LookupError, match="Next"):
        install_script("#### Step", "#### Next", readme=readme)


def test_the_script_runs_the_sections_in_the_order_given(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(MARKDOWN)
    script = install_script("##### Sub-step", "#### Step", readme=readme)
    assert script.index("only under the sub-step") < script.index("apt-get install")
