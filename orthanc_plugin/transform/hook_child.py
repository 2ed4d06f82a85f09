"""Bootstrap of a hook process: `python -I hook_child.py CONFIG_JSON`, the DICOM file on stdin.

Started by hooks.run_hook; never imported by the gateway. It runs as a plain file under -I
(no PYTHONPATH, no user site, no script directory on sys.path), so it imports nothing from the
gateway: hook_api.py, which scripts import, is loaded by path next to this file.

Order matters and is the point of this file:
  1. stdout is moved to a private fd and fd 1 pointed at stderr, so print() in a script cannot
     corrupt the result stream;
  2. input and script source are read (before isolation: a user namespace can cost the right
     to read files the parent could read);
  3. resource limits (address space, CPU, core dumps, file size);
  4. network isolation: a user+network or network namespace (lo only, and down), which needs a
     single-threaded process, hence before pydicom (numpy may start threads);
  5. pydicom is imported and the socket guard installed (audit hook + replaced functions);
  6. only then is the script executed.

The answer on the private fd is one JSON line, followed for status "ok" by the output bytes:
  {"status": "ok"|"unchanged"|"refused"|"memory"|"crash"|"invalid"|"probe", ...}
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import resource
import sys
import traceback
import types
from io import BytesIO
from pathlib import Path
from typing import Any, NoReturn

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

# Names reported back to the parent (hooks.py keeps the same constants).
ISOLATION_USER_NET = "user+network namespace"
ISOLATION_NET = "network namespace"
ISOLATION_GUARD = "python socket guard"
ISOLATION_NONE = "none (network allowed)"

_NAMESPACE_FLAGS = {
    "user+net": (CLONE_NEWUSER | CLONE_NEWNET, ISOLATION_USER_NET),
    "net": (CLONE_NEWNET, ISOLATION_NET),
}
# Everything a script's process could use to start another program; blocked only when no
# namespace could be made, because then a child program would have the network.
_SPAWN_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
})
_SOCKET_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
})
REASON_LIMIT = 500


class _Channel:
    """The private copy of the original stdout: the only way back to the parent."""

    def __init__(self) -> None:
        self.fd = os.dup(1)
        os.dup2(2, 1)  # script output (print) goes to stderr, which the parent keeps a tail of

    def answer(self, header: dict[str, Any], payload: bytes = b"") -> NoReturn:
        data = json.dumps(header).encode() + b"\n" + payload
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.close(self.fd)
        sys.stderr.flush()
        # _exit: threads a script left running must not keep the process (and the parent) alive.
        os._exit(0)


def _set_limits(config: dict[str, Any]) -> None:
    memory = int(config["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(config["cpu_seconds"])
    # Soft limit: SIGXCPU (terminates); the hard limit one second later is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A script may write scratch files, but not fill the disk.
    size = int(config["max_file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _unshare(flags: int) -> bool:
    unshare = getattr(os, "unshare", None)  # Python 3.12+
    if unshare is not None:
        try:
            unshare(flags)
            return True
        except OSError:
            return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.unshare(flags)) == 0


def _isolate_namespaces(attempts: list[str]) -> str | None:
    uid, gid = os.getuid(), os.getgid()
    for name in attempts:
        flags, label = _NAMESPACE_FLAGS[name]
        if _unshare(flags):
            if flags & CLONE_NEWUSER:
                _map_self(uid, gid)
            return label
    return None


def _map_self(uid: int, gid: int) -> None:
    """Keep the same user and group inside the new user namespace (the kernel allows mapping
    one's own ids); unmapped, the script would run as 65534 and see its files as nobody's.
    The capabilities that mapping gives hold inside the namespace only."""
    try:
        Path("/proc/self/setgroups").write_text("deny")  # required before gid_map
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError:
        pass  # still isolated; only the ids look different


def _install_guard(block_spawn: bool) -> None:
    """Python-level blocking of the network: always on top of a namespace (one clear message for
    script authors), the only barrier where no namespace can be made. An audit hook cannot be
    removed by the script; the replaced functions fail early with the same message."""
    import socket

    message = "network access is not allowed for this hook (rule setting network: false)"

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event in _SOCKET_EVENTS or (block_spawn and event in _SPAWN_EVENTS):
            raise PermissionError(f"{message}: {event}")

    def blocked(*args: object, **kwargs: object) -> NoReturn:
        raise PermissionError(message)

    sys.addaudithook(audit)
    for name in ("socket", "create_connection", "create_server", "getaddrinfo", "gethostbyname"):
        setattr(socket, name, blocked)


def _register_hook_api() -> None:
    """Make `from orthanc_plugin.transform.hook_api import Refuse` work without the gateway:
    empty parent packages (no __path__ entries, so nothing else of the gateway is importable)."""
    path = Path(__file__).with_name("hook_api.py")
    for package in ("orthanc_plugin", "orthanc_plugin.transform"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules[package] = module
    spec = importlib.util.spec_from_file_location("orthanc_plugin.transform.hook_api", path)
    assert spec is not None and spec.loader is not None
    api = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = api
    spec.loader.exec_module(api)


def _last_line(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    text = lines[-1].strip() if lines else type(error).__name__
    return text[:REASON_LIMIT]


def main() -> None:
    channel = _Channel()
    config: dict[str, Any] = json.loads(sys.argv[1])
    data = b"" if config.get("probe") else sys.stdin.buffer.read()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    source = b"" if config.get("probe") else Path(config["script"]).read_bytes()

    _set_limits(config)
    if config["network"]:
        isolation = ISOLATION_NONE
    else:
        isolation = _isolate_namespaces(list(config["namespaces"])) or ISOLATION_GUARD
    if config.get("probe"):
        channel.answer({"status": "probe", "isolation": isolation})

    try:
        import pydicom
        from pydicom.filewriter import dcmwrite

        if not config["network"]:
            _install_guard(block_spawn=isolation == ISOLATION_GUARD)
        _register_hook_api()
        ds = pydicom.dcmread(BytesIO(data))
        spec = importlib.util.spec_from_file_location("site_hook", config["script"])
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["site_hook"] = module
        exec(compile(source, config["script"], "exec"), module.__dict__)
        process = getattr(module, "process", None)
        if not callable(process):
            channel.answer({"status": "invalid", "reason": "the script defines no process(ds)"})
        result = process(ds)
    except MemoryError:
        channel.answer({"status": "memory"})
    except BaseException as error:
        if isinstance(error, refuse_type()):
            channel.answer({"status": "refused", "reason": str(error)[:REASON_LIMIT]})
        traceback.print_exc()
        channel.answer({"status": "crash", "error": _last_line(error), "isolation": isolation})

    try:
        if result is None:
            # None means unchanged; changes made in place and then dropped would surprise the
            # author, so say so instead of forwarding the original silently.
            if ds != pydicom.dcmread(BytesIO(data)):
                channel.answer({"status": "invalid", "reason": "process() returned None but "
                                "changed the dataset in place (return ds to keep the changes)"})
            channel.answer({"status": "unchanged", "isolation": isolation})
        if not isinstance(result, pydicom.Dataset):
            channel.answer({"status": "invalid", "reason": "process() returned "
                            f"{type(result).__name__}, expected a pydicom Dataset or None"})
        if not getattr(result, "file_meta", None):
            result.file_meta = ds.file_meta
        # The file meta must name the object it carries, also after an allowed UID change.
        if "SOPInstanceUID" in result:
            result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
        if "SOPClassUID" in result:
            result.file_meta.MediaStorageSOPClassUID = result.SOPClassUID
        buffer = BytesIO()
        dcmwrite(buffer, result, enforce_file_format=True)
    except MemoryError:
        channel.answer({"status": "memory"})
    except Exception as error:
        channel.answer({"status": "invalid", "reason": f"cannot encode the result: "
                        f"{_last_line(error)}"})
    output = buffer.getvalue()
    if len(output) > int(config["max_output_bytes"]):
        channel.answer({"status": "invalid", "reason": f"output of {len(output)} bytes exceeds "
                        f"the limit of {config['max_output_bytes']}"})
    channel.answer({"status": "ok", "isolation": isolation}, output)


def refuse_type() -> type[BaseException]:
    module = sys.modules.get("orthanc_plugin.transform.hook_api")
    refuse = getattr(module, "Refuse", None)
    return refuse if isinstance(refuse, type) and issubclass(refuse, BaseException) else _Never


class _Never(BaseException):
    """Stands for Refuse when hook_api could not even be loaded: matches nothing."""


if __name__ == "__main__":
    main()
