"""`aio-backoff preview`: the table is the library's own planning; the plot is a PNG
of the size asked for, not blank."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from aio_backoff import Backoff, exponential
from aio_backoff.cli import main
from aio_backoff.cli._errors import Exit

pytestmark = [pytest.mark.core, pytest.mark.timeout(60)]


class Slow(Backoff):
    """A class for ``module:Class`` (this test module is importable)."""

    schedule = (250, 750)
    limit = 3
    random_sigma = 50


class Doubling(Backoff):
    schedule = staticmethod(exponential(100, cap_ms=1000))
    limit = 6
    random_sigma = 0


class Dynamic(Backoff):
    limit = None
    random_sigma = 0

    @classmethod
    def get_next_schedule_item(cls, index: int) -> float:
        return 50 * (index + 1)


def preview(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["preview", *argv, "--json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def test_comma_schedule_repeats_its_last_delay_and_expires_after_the_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = preview(capsys, "100,200,500", "--limit", "5", "--sigma", "0")

    rows = document["rows"]
    assert [row["delay_ms"] for row in rows[:-1]] == [100, 200, 500, 500, 500]
    assert [row["cumulative_ms"] for row in rows[:-1]] == [100, 300, 800, 1300, 1800]
    assert [row["attempt"] for row in rows] == [1, 2, 3, 4, 5, 6]
    # no jitter: the band is the delay itself
    assert all(row["jitter_low_ms"] == row["delay_ms"] for row in rows[:-1])
    assert rows[-1]["delay_ms"] is None
    assert rows[-1]["expires"] == "Backoff aborted after '5' retries (~2 seconds)"


def test_jitter_band_is_two_sigma_rounded_like_the_library(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = preview(capsys, "1000,30", "--limit", "2", "--sigma", "50")

    first, second, expired = document["rows"]
    # gauss pinned at mu -+ 2 sigma, rounded to sigma / groups = 10 ms
    assert (first["jitter_low_ms"], first["jitter_high_ms"]) == (900, 1100)
    assert (first["cumulative_low_ms"], first["cumulative_high_ms"]) == (900, 1100)
    # 30 - 100 < 0: the delay's absolute value can reach 0
    assert (second["jitter_low_ms"], second["jitter_high_ms"]) == (0, 130)
    assert expired["expires"].startswith("Backoff aborted after '2' retries")


def test_every_draw_of_the_library_falls_in_the_band_or_near_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = preview(capsys, "1000,2000", "--limit", "2", "--sigma", "100")
    bands = [(r["jitter_low_ms"], r["jitter_high_ms"]) for r in document["rows"][:-1]]
    policy = type("Policy", (Backoff,), {"schedule": (1000, 2000), "limit": 2})

    for retries, (low, high) in enumerate(bands):
        draws = [policy().compute_next(retries) for _ in range(2000)]
        inside = sum(low <= draw <= high for draw in draws) / len(draws)
        assert inside > 0.93, (retries, inside)


def test_a_class_is_imported_and_its_settings_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = preview(capsys, f"{__name__}:Slow")

    assert document["backoff"].endswith("Slow")
    assert document["limit"] == 3
    assert [row["delay_ms"] for row in document["rows"]] == [250, 750, 750, None]
    assert document["rows"][0]["jitter_high_ms"] == 350

    # --limit and --sigma override the class's
    document = preview(capsys, f"{__name__}:Slow", "--limit", "1", "--sigma", "0")
    assert [row["delay_ms"] for row in document["rows"]] == [250, None]


def test_callable_schedules_and_overrides_are_the_class_s_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = preview(capsys, f"{__name__}:Doubling")
    assert document["schedule"] == "exponential(...)"
    delays = [row["delay_ms"] for row in document["rows"]]
    assert delays == [100, 200, 400, 800, 1000, 1000, None]

    document = preview(capsys, f"{__name__}:Dynamic")
    assert document["schedule"] == "Dynamic.get_next_schedule_item"
    assert [row["delay_ms"] for row in document["rows"][:3]] == [50, 100, 150]
    assert document["rows"][-1]["cumulative_ms"] == sum(range(50, 1001, 50))


def test_unlimited_shows_twenty_retries_and_never_expires(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["preview", "100", "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert "never expires" in out
    assert "aborted" not in out
    document = preview(capsys, "100", "--limit", "0")
    assert len(document["rows"]) == 20
    assert document["limit"] is None


def test_table_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "100,200", "--limit", "2", "--sigma", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert lines[0] == (
        "Backoff: schedule 100,200 ms, limit 2, jitter sigma 10 ms rounded to 2 ms"
    )
    header = lines[2].split()
    assert header[:3] == ["attempt", "delay", "ms"]
    assert lines[4].split()[:3] == ["1", "100", "80..120"]
    assert lines[5].split()[:3] == ["2", "200", "180..220"]
    assert "Backoff aborted after '2' retries" in lines[6]


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["1,x"], Exit.USAGE, "'x' in the schedule"),
        (["100,-5"], Exit.USAGE, "not a number of ms"),
        (["no_such_module_here:X"], Exit.UNKNOWN, "cannot import module"),
        ([f"{__name__}:Nope"], Exit.UNKNOWN, "is not a Backoff subclass"),
        ([f"{__name__}:preview"], Exit.UNKNOWN, "is not a Backoff subclass"),
        (["100", "--limit", "-1"], Exit.USAGE, "limit must be a whole number"),
    ],
)
def test_errors_say_what_and_what_to_do(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: Exit, words: str
) -> None:
    assert main(["preview", *argv]) == code
    err = capsys.readouterr().err
    assert words in err
    assert err.startswith("aio-backoff preview: ")


def test_plot_is_a_png_of_the_size_asked_for_and_not_blank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "schedule.png"
    document = preview(
        capsys, "100,200,500", "--limit", "6", "--plot", str(path), "--size", "640x360"
    )

    assert document["plot"] == str(path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (640, 360)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None
    assert len(colours) > 50  # lines, band, text: not one flat colour
    most = max(count for count, _ in colours)
    assert most < 0.95 * 640 * 360  # the background does not fill it all


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    path = tmp_path / "schedule.png"

    assert main(["preview", "100", "--plot", str(path)]) == Exit.USAGE
    assert "pip install 'aio-backoff[plot]'" in capsys.readouterr().err
    assert not path.exists()


def test_bad_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["preview", "100", "--plot", "x.png", "--size", "wide"])
    assert exited.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
