#!/usr/bin/env python3
"""Drives a Hospes QMP socket with the real `qemu.qmp` library, both its asyncio
client (QMPClient) and the synchronous legacy one that qmp-shell and QEMU's iotests use.

Usage: qmp_interop.py SOCKET
Ends the VM with `quit`. Exits non-zero (with a traceback) on the first mismatch.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

TIMEOUT = 5.0


async def next_event(qmp: QMPClient, name: str):
    """Returns the next event, which must be called `name`."""
    event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
    assert event["event"] == name, f"expected {name}, got {event}"
    assert isinstance(event["timestamp"]["seconds"], int), event
    assert isinstance(event["timestamp"]["microseconds"], int), event
    return event


async def expect_error(qmp: QMPClient, error_class: str, cmd: str, args=None):
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as err:
        assert err.error_class == error_class, (cmd, err.error_class, err.error.desc)
        return
    raise AssertionError(f"{cmd} {args} should have failed with {error_class}")


async def async_client(path: str) -> None:
    qmp = QMPClient("hospes-interop")
    await qmp.connect(path)
    greeting = qmp.greeting
    assert greeting is not None
    assert greeting.QMP.capabilities == [], greeting
    assert str(greeting.QMP.version["package"]).startswith("hospes-vmm"), greeting

    status = await qmp.execute("query-status")
    assert status == {"running": True, "singlestep": False, "status": "running"}, status

    await qmp.execute("stop")
    await next_event(qmp, "STOP")
    status = await qmp.execute("query-status")
    assert status["status"] == "paused" and status["running"] is False, status
    await qmp.execute("cont")
    await next_event(qmp, "RESUME")

    await qmp.execute("system_reset")
    reset = await next_event(qmp, "RESET")
    assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}, reset

    await expect_error(qmp, "CommandNotFound", "no-such-command")
    await expect_error(qmp, "GenericError", "stop", {"now": True})
    await expect_error(qmp, "CommandNotFound", "qmp_capabilities")

    version = await qmp.execute("query-version")
    assert set(version["qemu"]) == {"major", "minor", "micro"}, version
    names = {c["name"] for c in await qmp.execute("query-commands")}
    for cmd in ("query-status", "stop", "cont", "system_powerdown", "system_reset", "quit"):
        assert cmd in names, (cmd, names)

    await qmp.disconnect()


def legacy_client(path: str) -> None:
    qmp = QEMUMonitorProtocol(path)
    greeting = qmp.connect(negotiate=True)
    assert "QMP" in greeting, greeting
    assert qmp.cmd("query-status")["status"] == "running"
    qmp.cmd("system_powerdown")
    event = qmp.pull_event(wait=TIMEOUT)
    assert event is not None and event["event"] == "POWERDOWN", event
    qmp.close()


async def quit_vm(path: str) -> None:
    qmp = QMPClient("hospes-interop-quit")
    await qmp.connect(path)
    await qmp.execute("quit")
    shutdown = await next_event(qmp, "SHUTDOWN")
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}, shutdown
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # The helper has closed the socket, as QEMU does after quit.


def main() -> None:
    path = sys.argv[1]
    asyncio.run(async_client(path))
    legacy_client(path)
    asyncio.run(quit_vm(path))
    print("qemu.qmp interop: ok")


if __name__ == "__main__":
    main()
