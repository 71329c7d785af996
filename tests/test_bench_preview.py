"""`python app.py bench preview --tiny`: the preview cost measurement runs and records what the target is judged on."""

import json

import cli


def test_preview_bench_records_the_cost_of_previews(tmp_path, tiny_root, capsys):
    out = tmp_path / "preview.json"
    assert cli.main(["bench", "preview", "--tiny", "--repeat", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    row, = result["presets"]
    assert (row["preset"], row["steps"], row["every"], row["previews_per_run"]) == ("tiny", 8, 2, 4)
    assert row["identical_images"] is True  # previews never change the image
    assert 0 < row["preview_share"] < 1 and row["ms_per_preview"] > 0
    assert row["judged"] is False  # the target is judged on the quick shape, not on tiny's millisecond steps
    assert len(row["runs"]["on"]) == len(row["runs"]["off"]) == 1
    assert result["target"] == 0.03 and result["load_before"]
    text = out.with_suffix(".md").read_text()
    assert "| tiny | 128x128 | 8 | 2 | 4 |" in text and "not judged" in text
