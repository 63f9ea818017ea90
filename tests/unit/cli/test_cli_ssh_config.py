"""``atelier config-ssh``'s managed block and known_hosts edits: idempotent, removable,
other content untouched."""

from __future__ import annotations

from pathlib import Path

from atelier.cli.ssh import BEGIN, END, known_hosts_lines, render_block, update_block

USER_CONFIG = "Host *\n  User someone\n\nHost work\n  HostName work.example\n"


def test_block_goes_first_and_is_replaced_in_place(tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    block = render_block(["sb-b", "sb-a"], "gw.example", 2222, kh, None)
    assert block.startswith(BEGIN + "\n") and block.endswith("Match all\n" + END + "\n")
    assert block.index("Host atelier-sb-a") < block.index("Host atelier-sb-b")
    assert "  User sb-a\n" in block and "  Port 2222\n" in block
    assert f"  UserKnownHostsFile {kh.resolve()}\n" in block
    once = update_block(USER_CONFIG, block)
    assert once.startswith(BEGIN) and once.endswith(USER_CONFIG)
    assert update_block(once, block) == once  # idempotent
    newer = render_block(["sb-c"], "gw.example", 2222, kh, tmp_path / "id")
    twice = update_block(once, newer)
    assert "sb-a" not in twice and "Host atelier-sb-c" in twice
    assert f"  IdentityFile {(tmp_path / 'id').resolve()}\n" in twice
    assert twice.count(BEGIN) == 1 and twice.endswith(USER_CONFIG)
    assert update_block(twice, None) == USER_CONFIG
    assert update_block(USER_CONFIG, None) == USER_CONFIG
    assert update_block("", block) == block


def test_known_hosts_entries_are_replaced_per_host_and_port() -> None:
    existing = "github.com ssh-ed25519 AAAA1\n[gw]:2222 ssh-ed25519 OLD\n"
    updated = known_hosts_lines(existing, "gw", 2222, ["ssh-ed25519 NEW"])
    assert updated == "github.com ssh-ed25519 AAAA1\n[gw]:2222 ssh-ed25519 NEW\n"
    assert known_hosts_lines(updated, "gw", 2222, ["ssh-ed25519 NEW"]) == updated
    assert known_hosts_lines("", "gw", 22, ["ssh-ed25519 K"]) == "gw ssh-ed25519 K\n"
