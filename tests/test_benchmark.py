"""The benchmark's arithmetic: the work it credits each model with and the table it prints.

Speed itself is never asserted here; `python -m keras_beit.benchmark` measures it.
"""

import json

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from keras_beit import benchmark

TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)


def test_beit_base_at_224_is_credited_with_the_published_35_1_gflop():
    assert benchmark.gflop_per_image("base224_b1") == pytest.approx(35.1, abs=0.05)


def test_a_training_step_is_credited_with_three_forward_passes():
    assert benchmark.gflop_per_image("base224_train_b8") == pytest.approx(3 * 35.1, abs=0.15)


def test_segmenter_work_matches_torch_flop_counter_on_transformers_segmentation_model():
    # UperNet's convolutions at a quarter of 640 outweigh the encoder; the
    # count must include them, or the fraction of the GEMM limit is 5x too low.
    config = transformers.BeitConfig(
        image_size=640, patch_size=16, use_relative_position_bias=True, num_labels=150,
        out_indices=[1, 2, 3, 4], **TINY,
    )
    config._attn_implementation = "eager"
    model = transformers.BeitForSemanticSegmentation(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, 3, 640, 640))
    assert benchmark._model_flops(TINY, 640, task="segmenter") == counter.get_total_flops()


def test_show_prints_ratios_against_sdpa_and_the_fraction_of_the_gemm_limit(tmp_path, capsys):
    results = {
        "quick": False,
        "gemm": {"float32": {"gflops": 351.0}, "bfloat16": {"gflops": 702.0}},
        "cases": {
            "base224_b1": {
                "keras_beit_jax": {
                    "images_per_second": 4.0, "peak_rss_mb": 1000.0, "import_rss_mb": 600.0, "running_peak_rss_mb": 800.0,
                },
                # A run saved before memory was broken down prints dashes.
                "transformers_sdpa": {"images_per_second": 2.0, "peak_rss_mb": 900.0, "spread": 0.125},
            }
        },
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    benchmark.main(["--show", str(path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("base224_b1")]
    # 4 img/s x 35.1 GFLOP = 140.4 GFLOP/s = 40% of 351.
    assert rows == [
        ["base224_b1", "keras_beit_jax", "4.000", "2.00", "40%", "1000", "600", "800", "-"],
        ["base224_b1", "transformers_sdpa", "2.000", "1.00", "20%", "900", "-", "-", "12%"],
    ]


def test_show_names_the_image_layout_keras_beit_ran_in(tmp_path, capsys):
    results = {"quick": False, "gemm": {"float32": {"gflops": 1.0}, "bfloat16": {"gflops": 1.0}}, "cases": {}}
    for data_format, expected in ((None, "channels_last"), ("channels_first", "channels_first")):
        if data_format:
            results["data_format"] = data_format
        path = tmp_path / "results.json"
        path.write_text(json.dumps(results))
        benchmark.main(["--show", str(path)])
        assert f"keras_beit images: {expected} (transformers: channels first)" in capsys.readouterr().out


def test_rounds_keep_the_median_process_and_report_the_spread_of_the_finished_ones():
    runs = [
        {"seconds": 2.0, "images_per_second": 0.5, "peak_rss_mb": 1.0},
        {"error": "killed"},
        {"seconds": 1.0, "images_per_second": 1.0, "peak_rss_mb": 2.0},
        {"seconds": 4.0, "images_per_second": 0.25, "peak_rss_mb": 3.0},
    ]
    summary = benchmark.summarise_runs(runs)
    assert summary["seconds"] == 2.0 and summary["peak_rss_mb"] == 1.0
    # (1.0 - 0.25) img/s over the median 0.5 img/s.
    assert summary["spread"] == pytest.approx(1.5)


def test_a_single_run_has_no_spread_and_all_failed_runs_report_the_first_error():
    assert "spread" not in benchmark.summarise_runs([{"seconds": 1.0, "images_per_second": 1.0}])
    assert benchmark.summarise_runs([{"error": "a"}, {"error": "b"}]) == {"error": "a"}


def test_fewer_than_one_round_is_refused_with_the_value_received(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--rounds", "0"])
    assert "--rounds must be at least 1; received 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(benchmark.CASES))
def test_keras_beit_is_built_without_transformers_from_the_network_transformers_runs(name):
    from keras_beit.convert.transformers import convert_backbone_config

    case = benchmark.CASES[name]
    expected = transformers.BeitConfig(**benchmark._config_dict(case)).to_dict()
    assert convert_backbone_config(benchmark._config_dict(case), tap_points="transformers") == convert_backbone_config(
        expected, tap_points="transformers"
    )


def _resident_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_a_transformers_process_loads_no_keras_and_reports_only_its_own_memory():
    # getrusage in a child starts from its parent's peak; this process holds
    # keras, keras-hub and TensorFlow, so a figure above our own would be ours.
    result = benchmark._spawn(None, "--impl", "transformers_sdpa", "--case", "base224_b1", "--quick", "--repeats", "1")
    assert result["frameworks"] == ["torch", "transformers"]
    assert result["import_rss_mb"] <= result["running_peak_rss_mb"] <= result["peak_rss_mb"] < _resident_mb()



def test_the_peak_survives_the_resets_between_several_timed_measurements(monkeypatch):
    import numpy as np

    monkeypatch.setattr(benchmark, "_MEMORY", {})
    before = _resident_mb()

    calls = []

    def allocate_400_mb_in_the_warm_up():
        if not calls:
            np.ones(400 * 2**20 // 8).sum()  # written, so resident, then freed
        calls.append(None)

    benchmark._timed(allocate_400_mb_in_the_warm_up, repeats=1)
    benchmark._timed(lambda: None, repeats=1)  # warms up and resets the high-water mark again
    assert benchmark._peak_rss_mb() >= before + 390
