"""bench/relay: how much the gateway adds to a C-STORE relay and to ingest. Prints JSON.

Sends N CT slices (512x512) with DCMTK's storescu and measures, in the same run:
- direct: modality -> target, time until the target has stored every slice (the baseline);
- relay_instance / relay_stable: modality -> gateway (forward-all rule, `on: instance` or
  `on: stable-study`) -> target, time until the target has every slice;
- ingest_plain / ingest_plugin: storescu duration into a plain Orthanc and into the gateway;
- lua_async / lua_send: the peer a site would write instead, Orthanc's own Lua auto-routing
  (`OnStoredInstance` -> asynchronous `/modalities/TARGET/store`, or `SendToModality`);
- lua_async_watched: the same Lua router with the gateway loaded beside it and routing nothing
  (every instance noted, described, audited, indexed): the cost of the gateway's observation.
Each measurement is the median of --rounds rounds, each with fresh UIDs. Ratios are what to read:
the machine is shared and absolute seconds move with its load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid

from tests.support.orthanc import OrthancProcess, storescu
from tests.support.rtset import make_ct_series, write_datasets

RULES = """
rules:
  - name: forward all
    on: {trigger}
    match: {{calling_aet: MODALITY}}
    actions:
      - forward: TARGET
"""
LUA_ASYNC = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  RestApiPost('/modalities/TARGET/store',
              '{"Resources": ["' .. instanceId .. '"], "Synchronous": false}')
end
"""
LUA_SEND = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'TARGET')
end
"""
NO_MATCH_RULES = """
rules:
  - name: matches nothing
    on: instance
    match: {calling_aet: NOBODY}
    actions:
      - forward: TARGET
"""


def make_slices(folder: Path, slices: int, size: int) -> list[Path]:
    series = make_ct_series(
        patient_id=f"BENCH-{generate_uid()[-8:]}", patient_name="Bench^Relay",
        study_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
        n_slices=slices, rows=size, columns=size,
    )
    return write_datasets(series, folder)


def wait_for_count(peer: OrthancProcess, count: int, timeout: float = 300) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if peer.instance_count() >= count:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"{peer.aet} has {peer.instance_count()} of {count} instances")


# Between measurements: the gateways index what they received once quiet (the SQL index reads
# whole files); that work must not fall into the next measurement, whichever peer it measures.
SETTLE_SECONDS = 2.0


def timed_send(files: list[Path], sender_port: int, target: OrthancProcess, called: str) -> float:
    target.reset_storage()
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    storescu(files, sender_port, calling="MODALITY", called=called)
    return wait_for_count(target, len(files)) - start


def timed_ingest(files: list[Path], receiver: OrthancProcess) -> float:
    receiver.reset_storage()
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    storescu(files, receiver.dicom_port, calling="MODALITY", called=receiver.aet)
    return time.perf_counter() - start


def quartiles(ratios: list[float]) -> list[float]:
    """First and third quartile of per-round ratios: a goal inside them is not yet decided."""
    if len(ratios) < 2:
        return [round(ratios[0], 3)] * 2 if ratios else []
    q = statistics.quantiles(ratios, n=4)
    return [round(q[0], 3), round(q[2], 3)]


def quick_look(times: dict[str, list[float]]) -> dict[str, object]:
    """What --only measured: medians, and each measurement's per-round ratio to Lua's async."""
    measured = {key: values for key, values in times.items() if values}
    looked: dict[str, object] = {
        "seconds_median": {k: round(statistics.median(v), 3) for k, v in measured.items()}}
    if "lua_async" in measured:
        for key, values in measured.items():
            ratios = [a / b for a, b in zip(values, measured["lua_async"], strict=True)]
            looked[f"{key}_to_lua_async_median_of_rounds"] = round(statistics.median(ratios), 3)
            looked[f"{key}_to_lua_async_quartiles_of_rounds"] = quartiles(ratios)
    return looked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    # Rounds on these shared machines spread from 0.65 to 1.56 in gateway/Lua ratio (measured):
    # three cannot tell a 5 % difference from the load of the moment, and with 8 the quartiles
    # of the per-round ratio still straddled the goal (0.87-1.39 on trixie).
    parser.add_argument("--rounds", type=int, default=16)
    # For a quick look while working on one path (e.g. relay_instance,lua_async): the ratios of
    # what was not measured are left out. Results to commit measure everything.
    parser.add_argument("--only", default="", help="comma-separated measurement names")
    args = parser.parse_args()

    wanted = set(filter(None, args.only.split(",")))
    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-"))
    target = OrthancProcess(work / "target", "TARGET")
    plain = OrthancProcess(work / "plain", "PLAIN")
    gateways = {
        trigger: OrthancProcess(
            work / f"gw-{trigger}", "RTGATEWAY", plugin=True,
            rules=RULES.format(trigger=trigger), modalities={"TARGET": target}, stable_age=1,
        )
        for trigger in ("instance", "stable-study")
    }
    # The same gateway without MD5 checksums of stored files: what that integrity check costs.
    gateways["instance-no-md5"] = OrthancProcess(
        work / "gw-instance-no-md5", "RTGATEWAY", plugin=True,
        rules=RULES.format(trigger="instance"), modalities={"TARGET": target}, stable_age=1,
        extra={"StoreMD5ForAttachments": False},
    )
    luas = {}
    # lua_async_watched: Lua routes while the gateway only watches (a rule that matches nothing,
    # so every instance is still noted, described, audited and indexed). A gateway that keeps
    # these records pays at least this much over bare Lua, whoever routes.
    for name, script, watched in (("lua_async", LUA_ASYNC, False), ("lua_send", LUA_SEND, False),
                                  ("lua_async_watched", LUA_ASYNC, True)):
        folder = work / name
        folder.mkdir(parents=True)
        (folder / "route.lua").write_text(script)
        luas[name] = OrthancProcess(folder, "LUAROUTER", plugin=watched,
                                    rules=NO_MATCH_RULES if watched else None,
                                    modalities={"TARGET": target},
                                    extra={"LuaScripts": [str(folder / "route.lua")]})
    idle_gateway = OrthancProcess(
        work / "gw-idle", "RTGATEWAY", plugin=True, rules=NO_MATCH_RULES,
        modalities={"TARGET": target},
    )
    processes = [target, plain, idle_gateway, *gateways.values(), *luas.values()]
    times: dict[str, list[float]] = {k: [] for k in (
        "direct", "relay_instance", "relay_instance_no_md5", "relay_stable", "ingest_plain",
        "ingest_plugin", "lua_async", "lua_send", "lua_async_watched")}
    try:
        for process in processes:
            process.start()
        for round_number in range(args.rounds):
            files = make_slices(work / f"round-{round_number}", args.slices, args.size)
            # (what, where storescu sends, its AE title); ingest measurements wait for no target.
            measurements: list[tuple[str, OrthancProcess, str]] = [
                ("direct", target, "TARGET"),
                ("ingest_plain", plain, "PLAIN"),
                ("ingest_plugin", idle_gateway, "RTGATEWAY"),
                ("relay_instance", gateways["instance"], "RTGATEWAY"),
                ("relay_instance_no_md5", gateways["instance-no-md5"], "RTGATEWAY"),
                ("relay_stable", gateways["stable-study"], "RTGATEWAY"),
                *((name, lua, "LUAROUTER") for name, lua in luas.items()),
            ]
            if wanted:
                measurements = [m for m in measurements if m[0] in wanted]
            # Each round starts at another measurement: a peer measured always first (cold
            # caches) or always last (after the others' background work) would be biased.
            shift = round_number % len(measurements)
            for name, receiver, called in measurements[shift:] + measurements[:shift]:
                times[name].append(timed_ingest(files, receiver) if name.startswith("ingest")
                                   else timed_send(files, receiver.dicom_port, target, called))
            shutil.rmtree(work / f"round-{round_number}")
    finally:
        for process in processes:
            process.stop()
    if wanted:
        print(json.dumps(quick_look(times), indent=2))
        shutil.rmtree(work, ignore_errors=True)
        return
    median = {key: statistics.median(values) for key, values in times.items()}

    def per_round(mine: str, baseline: str) -> list[float]:
        return [round(a / b, 3) for a, b in zip(times[mine], times[baseline], strict=True)]

    paired = {key: per_round(key, "lua_async") for key in ("relay_instance", "lua_async_watched")}
    # Both audited and indexed by the gateway, one routed by it and one by Lua: the comparison
    # that holds what the gateway records constant.
    paired_watched = per_round("relay_instance", "lua_async_watched")
    result = {
        "benchmark": "relay",
        "slices": args.slices,
        "size": f"{args.size}x{args.size}",
        "rounds": args.rounds,
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ratio_relay_instance_to_direct": round(median["relay_instance"] / median["direct"], 3),
        "ratio_relay_instance_no_md5_to_direct": round(
            median["relay_instance_no_md5"] / median["direct"], 3),
        "ratio_relay_stable_to_direct": round(median["relay_stable"] / median["direct"], 3),
        "ratio_lua_async_to_direct": round(median["lua_async"] / median["direct"], 3),
        "ratio_lua_send_to_direct": round(median["lua_send"] / median["direct"], 3),
        "ratio_gateway_to_lua_async": round(median["relay_instance"] / median["lua_async"], 3),
        # The same ratio round by round (the two measured minutes apart at most, under the same
        # load), and its median: the machine's drift between rounds falls out of it.
        "ratio_gateway_to_lua_async_by_round": paired["relay_instance"],
        "ratio_gateway_to_lua_async_median_of_rounds": round(
            statistics.median(paired["relay_instance"]), 3),
        "ratio_gateway_to_lua_async_quartiles_of_rounds": quartiles(paired["relay_instance"]),
        "ratio_lua_async_watched_to_lua_async": round(
            median["lua_async_watched"] / median["lua_async"], 3),
        "ratio_lua_async_watched_to_lua_async_median_of_rounds": round(
            statistics.median(paired["lua_async_watched"]), 3),
        "ratio_gateway_to_lua_async_watched": round(
            median["relay_instance"] / median["lua_async_watched"], 3),
        "ratio_gateway_to_lua_async_watched_median_of_rounds": round(
            statistics.median(paired_watched), 3),
        "ratio_gateway_to_lua_async_watched_quartiles_of_rounds": quartiles(paired_watched),
        "stable_age_seconds_included_in_relay_stable": 1,
        "ratio_ingest_plugin_to_plain": round(median["ingest_plugin"] / median["ingest_plain"], 3),
        "goals": {"relay_instance_to_direct": 1.3, "ingest_plugin_to_plain": 1.1,
                  "gateway_to_lua_async": 1.0},
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
