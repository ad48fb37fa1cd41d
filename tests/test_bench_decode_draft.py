"""bench/decode_draft.py: a whole tiny run prints both decoders' rates and their difference."""

from tests.bench_helpers import load_bench

decode_draft = load_bench("decode_draft")


def test_a_tiny_run_compares_draft_decoding_with_whole_decoding(tmp_path, capsys):
    assert (
        decode_draft.main(
            [
                "--photo-sizes",
                "640x480",
                "--images",
                "8",
                "--image-size",
                "32",
                "--cache",
                str(tmp_path),
            ]
        )
        == 0
    )
    header, row = capsys.readouterr().out.strip().splitlines()
    assert "ours img/s" in header and "whole img/s" in header
    photo, images, ours, whole, ratio, mean_diff, max_diff = row.split()
    assert (photo, images) == ("640x480", "8")
    assert float(ours) > 0 and float(whole) > 0 and ratio.endswith("x")
    assert float(mean_diff) < 3  # the same pictures, within JPEG noise
    assert len(list(tmp_path.rglob("*.jpg"))) == 8
