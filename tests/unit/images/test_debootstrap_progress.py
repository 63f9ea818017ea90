"""The debootstrap output parser, on a recorded (shortened) bookworm run."""

from __future__ import annotations

from pathlib import Path

from atelier.images.debootstrap import PHASES, ProgressEvent, ProgressParser

SAMPLE = Path(__file__).with_name("debootstrap-sample.log")


def parse(parser: ProgressParser, lines: list[str]) -> list[ProgressEvent]:
    return [e for e in map(parser.feed, lines) if e is not None]


def test_phases_and_counts_of_a_recorded_run() -> None:
    parser = ProgressParser()
    events = parse(parser, SAMPLE.read_text().splitlines(keepends=True))
    phases = list(dict.fromkeys(e.phase for e in events))
    assert phases == ["prepare", "download", "extract", "unpack", "configure"]
    assert [p for p in PHASES if p in phases] == phases  # in PHASES order
    assert parser.finished
    assert dict(parser.counts) == {"download": 4, "extract": 4, "unpack": 8, "configure": 8}

    downloads = [e for e in events if e.phase == "download" and e.message.startswith("Retr")]
    assert [e.done for e in downloads] == [1, 2, 3, 4]  # Validating lines do not count
    assert downloads[0].message == "Retrieving adduser"
    assert all(e.total is None for e in downloads)  # not known on a first build
    unpack = [e for e in events if e.phase == "unpack" and e.done]
    assert unpack[0].message == "Unpacking adduser"
    # the count never exceeds the total: the estimate (downloaded packages) grows
    assert all(e.total is not None and e.done <= e.total for e in unpack)
    configure = [e for e in events if e.phase == "configure" and e.done]
    assert "Configuring libpsl5" in [e.message for e in configure]  # ":amd64" dropped
    assert events[-1].message == "base system installed"


def test_totals_from_a_previous_build_are_used() -> None:
    parser = ProgressParser({"download": 140, "extract": 88})
    events = parse(parser, SAMPLE.read_text().splitlines())
    download = [e for e in events if e.phase == "download" and "Retrieving" in e.message]
    assert [(e.done, e.total) for e in download] == [(1, 140), (2, 140), (3, 140), (4, 140)]
    extract = [e for e in events if e.message.startswith("Extracting")]
    assert extract[-1] == ProgressEvent("extract", 4, 88, "Extracting base-passwd")


def test_index_files_and_other_lines() -> None:
    parser = ProgressParser()
    assert parser.feed("I: Retrieving InRelease \n") == ProgressEvent(
        "prepare", 0, None, "Retrieving InRelease"
    )
    assert parser.feed("I: Validating Packages \n") == ProgressEvent(
        "prepare", 0, None, "Validating Packages"
    )
    assert parser.feed("W: Failure trying to run: chroot /x mount -t proc\n") is None
    assert parser.feed("E: Couldn't find these debs: nosuchpkg\n") is None
    assert parser.feed("gpgv: Signature made Sat Nov 15\n") is None
    assert not parser.finished
    event = parser.feed("I: Resolving dependencies of base packages...\n")
    assert event is not None and event.message == "Resolving dependencies of base packages"


def test_low_total_hint_grows_with_the_count() -> None:
    parser = ProgressParser({"download": 1})
    parser.feed("I: Retrieving a 1\n")
    event = parser.feed("I: Retrieving b 1\n")
    assert event == ProgressEvent("download", 2, 2, "Retrieving b")
