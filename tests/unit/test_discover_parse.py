"""sinfo parsers used by discover_slurm_partitions and the solver (captured testbed output)."""

from __future__ import annotations

from pathlib import Path

from dispatch.placement import PartitionConfig
from dispatch.placement.probe import partition_configs_from_sinfo
from dispatch.slurm.parse import parse_sinfo_gres, parse_sinfo_gres_counts

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "sinfo-partitions"


def test_partitions_from_testbed_capture() -> None:
    parts = partition_configs_from_sinfo((FIX / "testbed_P.txt").read_text())
    assert parts == [PartitionConfig("gpu"), PartitionConfig("cpu", default=True)]


def test_partitions_deduplicated_across_state_groups() -> None:
    # sinfo prints a partition once per node-state group.
    text = "gpu\ngpu\ndebug*\ndebug*\nlong\n"
    assert partition_configs_from_sinfo(text) == [
        PartitionConfig("gpu"), PartitionConfig("debug", default=True), PartitionConfig("long")]
    assert partition_configs_from_sinfo("") == []


def test_gres_from_testbed_capture() -> None:
    gres = parse_sinfo_gres((FIX / "testbed_P_G.txt").read_text())
    assert gres == {"gpu": {"h100"}, "cpu": set()}


def test_gres_forms() -> None:
    text = (
        "a|gpu:a100:4(S:0-1),gpu:v100:2(S:0,1)\n"
        "b|gpu:4\n"
        "c|gpu:h100:8,tmpdisk:100\n"
        "a|gpu:l40s:2\n"
        "d*|(null)\n"
    )
    assert parse_sinfo_gres(text) == {
        "a": {"a100", "v100", "l40s"}, "b": {""}, "c": {"h100"}, "d": set()}


def test_gres_counts_most_per_node() -> None:
    assert parse_sinfo_gres_counts((FIX / "testbed_P_G.txt").read_text()) == {
        "gpu": {"h100": 4}, "cpu": {}}
    text = (
        "a|gpu:a100:4(S:0-1),gpu:v100:2(S:0,1)\n"
        "a|gpu:a100:8(S:0-1)\n"
        "b|gpu:4\n"
        "c|gpu:h100\n"
        "d*|(null)\n"
    )
    assert parse_sinfo_gres_counts(text) == {
        "a": {"a100": 8, "v100": 2}, "b": {"": 4}, "c": {"h100": 0}, "d": {}}
