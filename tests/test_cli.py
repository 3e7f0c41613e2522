"""The drivers' shared flags and output (espcn_jax.cli): one meaning and one bound per flag.

Each test defines the flags on a fresh ``FlagValues`` and parses argv as absl would, so a bound
that drifts (``--scale=1`` accepted, a negative seed, a malformed size) fails here; the drivers'
own end-to-end behaviour (exit 2, stdout) is tested in test_benchmarks.py.
"""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from absl import flags

from espcn_jax import cli


def _parse(define, *argv):
    fv = flags.FlagValues()
    holder = define(fv)
    fv(["prog", *argv])
    return holder


def _parse_error(define, *argv) -> str:
    with pytest.raises(flags.Error) as e:
        _parse(define, *argv)
    return str(e.value)


@pytest.mark.parametrize("value", [2, 3, 4, 8])
def test_scale_accepts_upscalings(value):
    assert (
        _parse(lambda fv: cli.define_scale_flag(flag_values=fv), f"--scale={value}").value == value
    )


@pytest.mark.parametrize("value", ["1", "0", "-3"])
def test_scale_refuses_non_upscalings_at_parse_time(value):
    message = _parse_error(lambda fv: cli.define_scale_flag(flag_values=fv), f"--scale={value}")
    assert message == f"flag --scale={value}: scale must be an integer >= 2, got {int(value)}"


def test_scale_default_must_be_valid_too():
    """absl validates defaults when flags are parsed: a driver cannot ship a default of 1."""
    with pytest.raises(flags.Error, match="scale must be an integer >= 2"):
        _parse(lambda fv: cli.define_scale_flag(1, flag_values=fv))


@pytest.mark.parametrize(
    "argv,expected", [([], (2, 3, 4)), (["--scales=3"], (3,)), (["--scales= 2, 4"], (2, 4))]
)
def test_scales_list(argv, expected):
    holder = _parse(lambda fv: cli.define_scales_flag(["2", "3", "4"], flag_values=fv), *argv)
    assert cli.parse_int_list(holder.value, "scales", cli.MIN_SCALE) == expected


@pytest.mark.parametrize(
    "value,bad", [("2,x", "'x'"), ("1,2", "'1'"), ("3,2.5", "'2.5'"), ("", "''")]
)
def test_scales_list_refuses_bad_items(value, bad):
    message = _parse_error(
        lambda fv: cli.define_scales_flag(["2"], flag_values=fv), f"--scales={value}"
    )
    assert message.startswith("flag --scales=") and ": scales must" in message
    assert message.endswith(bad)


def test_seed_bounds():
    define = lambda fv: cli.define_seed_flag(flag_values=fv)  # noqa: E731
    assert _parse(define, "--seed=0").value == 0
    assert _parse(define, "--seed=12345").value == 12345
    assert "--seed=-1" in _parse_error(define, "--seed=-1")


@pytest.mark.parametrize("value,expected", [("360x640", (360, 640)), ("1X2", (1, 2))])
def test_lr_size(value, expected):
    from espcn_jax.flops import parse_size

    holder = _parse(lambda fv: cli.define_lr_size_flag(flag_values=fv), f"--lr_size={value}")
    assert parse_size(holder.value) == expected


@pytest.mark.parametrize("value", ["360", "0x640", "axb", "3x4x5", "-2x3"])
def test_lr_size_refused_at_parse_time(value):
    message = _parse_error(lambda fv: cli.define_lr_size_flag(flag_values=fv), f"--lr_size={value}")
    assert f"flag --lr_size={value}: lr_size must be HxW" in message


def test_channels_flag_and_its_colour():
    define = lambda fv: cli.define_channels_flag(flag_values=fv)  # noqa: E731
    assert cli.color_of(_parse(define).value) == "y"
    assert cli.color_of(_parse(define, "--channels=3").value) == "rgb"
    for bad in ("0", "2", "4"):
        message = _parse_error(define, f"--channels={bad}")
        assert message == f"flag --channels={bad}: channels must be 1 (Y) or 3 (RGB), got {bad}"
    assert "--channels=y" in _parse_error(define, "--channels=y")
    for bad in (2, True, "y"):
        with pytest.raises(ValueError, match="channels must be 1 \\(Y\\) or 3 \\(RGB\\)"):
            cli.color_of(bad)


@pytest.mark.parametrize("source", ["skimage", "folder:/some/where", "tfds:div2k/bicubic_x3"])
def test_data_source_names_accepted_without_reading(source, tmp_path, monkeypatch):
    monkeypatch.setenv("ESPCN_JAX_DATA_DIR", str(tmp_path))  # nothing may be built there
    holders = _parse(lambda fv: cli.define_data_flags(flag_values=fv), f"--source={source}")
    assert holders["source"].value == source
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", ["imagenet", "tfds:", "skimage:x", "Folder"])
def test_data_source_names_refused_at_parse_time(source):
    message = _parse_error(lambda fv: cli.define_data_flags(flag_values=fv), f"--source={source}")
    assert f"unknown data source '{source}'" in message


def _emit(result, table, *argv) -> str:
    fv = flags.FlagValues()
    cli.define_json_flag(fv)
    fv(["prog", *argv])
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, out
    try:
        cli.emit(result, table, flag_values=fv)
    finally:
        sys.stdout = saved
    return out.getvalue()


def test_emit_json_round_trips():
    result = {"a": 1, "b": {"c": [1.5, None], "d": "x"}}
    assert json.loads(_emit(result, lambda r: "never", "--json")) == result


def test_emit_table_uses_the_table_function_or_a_default():
    assert _emit({"a": 1}, lambda r: f"A = {r['a']}") == "A = 1\n"
    assert _emit({"a": 1}, lambda r: print("printed")) == "printed\n"
    text = _emit({"alpha": 0.25, "nested": {"beta": 3}}, None)
    assert text.splitlines() == ["alpha   0.25", "nested:", "  beta  3"]


def test_no_positional_arguments():
    cli.check_no_positional(["prog"])
    with pytest.raises(ValueError, match="unexpected positional arguments: foo bar"):
        cli.check_no_positional(["prog", "foo", "bar"])


def test_shared_flags_belong_to_the_driver_that_defines_them():
    """So that a driver's --help/--helpshort lists --scale, --json, ... with its own flags."""
    fv = flags.FlagValues()
    cli.define_scale_flag(flag_values=fv)
    cli.define_json_flag(fv)
    cli.define_data_flags(flag_values=fv)
    for name in ("scale", "json", "source", "split", "tfds_data_dir"):
        assert fv.find_module_defining_flag(name) == __name__, name


def test_gpu_determinism_flag_only_where_a_gpu_plugin_is_and_never_over_the_users(monkeypatch):
    from espcn_jax import cli as cli_lib

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setattr(cli_lib, "_gpu_plugin_installed", lambda: False)
    assert not cli_lib.set_gpu_determinism()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    monkeypatch.setattr(cli_lib, "_gpu_plugin_installed", lambda: True)
    assert cli_lib.set_gpu_determinism()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_gpu_deterministic_ops=true",
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    assert not cli_lib.set_gpu_determinism()
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"
