import pytest

from cnn_redundancy.core.results import Result
from cnn_redundancy.report import Figure, Section, Table, load_sections, write_report


def test_sections_collect_into_one_report(tmp_path):
    a = Section("b-second", "Second <method>", intro="Para one.\n\nPara two.", order=20,
                tables=[Table("T", ["x", "y"], [[1, 0.123456]])], figures=[Figure("f.png", "a figure")])  # fmt: skip
    b = Section("a-first", "First", findings=["found it"], order=10)
    write_report(tmp_path, [a])
    path = write_report(tmp_path, [b])  # the earlier section is kept from disk
    html = path.read_text()
    assert html.index("First") < html.index("Second &lt;method&gt;")  # ordered and escaped
    assert "0.1235" in html and "found it" in html and '<img src="f.png"' in html and "<p>Para two.</p>" in html
    assert [s.key for s in load_sections(tmp_path)] == ["a-first", "b-second"]


def test_result_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Result.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid result file"):
        Result.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"type": "NoSuchResult"}')
    with pytest.raises(ValueError, match="Unknown result type"):
        Result.load(tmp_path / "odd.json")


def test_table_cells_are_escaped_once(tmp_path):
    s = Section("cells", "Cells", tables=[Table("T", ["a"], [["x<y & z"], [0.5]])])
    html = write_report(tmp_path, [s]).read_text()
    assert "<td>x&lt;y &amp; z</td>" in html and "&amp;lt;" not in html and "<td>0.5</td>" in html
