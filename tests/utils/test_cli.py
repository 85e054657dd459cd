"""Scripts end on a user's mistake with one line; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from utils.checkpoints import CheckpointError
from utils.cli import exit_on_user_error


def fail(error: BaseException):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error", [CheckpointError("w.pt: truncated"), FileNotFoundError("x.png"),
                                   ValueError("data.yaml: no 'names'")])
def test_user_errors_become_one_line_exits(error):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(fail(error))
    assert exit_info.value.code == f"error: {error}" and "\n" not in exit_info.value.code


def test_extra_error_types_join_and_bugs_propagate():
    with pytest.raises(SystemExit):
        exit_on_user_error(fail(RuntimeError("non-finite loss")), extra=(RuntimeError,))
    with pytest.raises(KeyError):
        exit_on_user_error(fail(KeyError("a bug")))
    assert exit_on_user_error(lambda: 42) == 42


def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path):
    from utils.torch_utils import cpu_has_fast_bf16

    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_fast_bf16(str(with_amx)) and not cpu_has_fast_bf16(str(without))
    assert not cpu_has_fast_bf16(str(tmp_path / "none"))
