#!/usr/bin/python3
"""Checks the Hospes window through AT-SPI, the accessibility tree screen readers use.

Run under a session with an AT-SPI bus and a running `hospes` (scripts/gui-test.sh sets
that up). Waits for the window, checks that texts are (or are not) on screen, can press
keys with xdotool and wait again, and saves a screenshot with ImageMagick's `import`.

Uses Debian's /usr/bin/python3 with python3-pyatspi.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pyatspi

APP_NAMES = {"hospes", "Hospes"}
# GTK 4.8 reports the main window as a frame and an AdwWindow (the assistant) as a filler.
WINDOW_ROLES = {pyatspi.ROLE_FRAME, pyatspi.ROLE_DIALOG, pyatspi.ROLE_FILLER}
# GTK 4.8 reports a GtkSwitch as a check box.
SWITCH_ROLES = {pyatspi.ROLE_CHECK_BOX, pyatspi.ROLE_TOGGLE_BUTTON}


def walk(node, depth=0):
    """Every accessible below `node`, depth first (bounded against cycles)."""
    if node is None or depth > 64:
        return
    yield node
    try:
        count = node.childCount
    except Exception:  # a widget that went away (a window closing)
        return
    for i in range(count):
        try:
            child = node.getChildAtIndex(i)
        except Exception:  # a widget that went away while walking
            continue
        yield from walk(child, depth + 1)


def find_app():
    """The running hospes with a window, or None.

    The registry can still list an instance that just quit; it has no children left.
    """
    desktop = pyatspi.Registry.getDesktop(0)
    found = None
    for i in range(desktop.childCount):
        try:
            app = desktop.getChildAtIndex(i)
            if app is not None and app.name in APP_NAMES and app.childCount > 0:
                found = app
        except Exception:  # an application that left while we looked
            continue
    return found


def has_window(app, title):
    """Whether `app` has a top-level window titled `title`. A window closing while we
    look (the settings pane after Save) raises from AT-SPI: that one is not there."""
    for i in range(app.childCount):
        try:
            node = app.getChildAtIndex(i)
            if node is not None and node.getRole() in WINDOW_ROLES and node.name == title:
                return True
        except Exception:
            continue
    return False


def is_shown(node):
    """Whether `node` takes up room in its window.

    GTK 4.8 reports neither SHOWING nor a false VISIBLE for the hidden pages of a GtkStack,
    but a widget that was never allocated has an empty extent. A page shown once and then
    hidden keeps its old extent, so checks for absence only work on widgets that were never
    shown or were removed, which is how the scenarios in scripts/gui-test.sh use them.
    """
    try:
        extents = node.queryComponent().getExtents(pyatspi.WINDOW_COORDS)
    except Exception:  # not a component, or gone
        return False
    return extents.width > 0 and extents.height > 0


def showing_texts(app):
    """Names of the shown accessibles that have one, mapped to their roles."""
    texts = {}
    for node in walk(app):
        try:
            if node.name and node.getRole() != pyatspi.ROLE_APPLICATION and is_shown(node):
                texts[node.name] = node.getRoleName()
        except Exception:
            continue
    return texts


def click(app, name, timeout):
    """Presses the shown push button called `name` through its AT-SPI action.

    With several, the last in the tree: the page's own button rather than the header bar's.
    """
    def last_button():
        buttons = [node for node in walk(app)
                   if node.getRole() == pyatspi.ROLE_PUSH_BUTTON and node.name == name
                   and is_shown(node)]
        return buttons[-1] if buttons else None

    def buttons():
        return ", ".join(f"{node.name!r} shown={is_shown(node)}" for node in walk(app)
                         if node.getRole() == pyatspi.ROLE_PUSH_BUTTON) or "no buttons"

    wait_for(last_button, timeout, f"a button called {name!r}",
             buttons).queryAction().doAction(0)


def find_switch(app, name, timeout):
    """The shown switch (or check box, toggle button) called `name`."""
    def switch():
        for node in walk(app):
            try:
                if node.name == name and node.getRole() in SWITCH_ROLES and is_shown(node):
                    return node
            except Exception:
                continue
        return None

    def named():
        return ", ".join(f"{node.getRoleName()} shown={is_shown(node)}"
                         for node in walk(app) if node.name == name) or "none by that name"

    return wait_for(switch, timeout, f"a switch called {name!r}", named)


def toggle(app, name, timeout):
    """Flips the shown switch called `name` through its AT-SPI action and waits until its
    checked state changed."""
    node = find_switch(app, name, timeout)
    was_on = node.getState().contains(pyatspi.STATE_CHECKED)
    node.queryAction().doAction(0)
    wait_for(lambda: node.getState().contains(pyatspi.STATE_CHECKED) != was_on, timeout,
             f"the switch {name!r} to flip")


def set_text(app, name, text, timeout):
    """Replaces the text of the shown editable field called `name` through AT-SPI."""
    def field():
        for node in walk(app):
            try:
                if node.name == name and is_shown(node):
                    return node.queryEditableText()
            except NotImplementedError:
                continue
            except Exception:
                continue
        return None

    wait_for(field, timeout, f"a text field called {name!r}").setTextContents(text)


def field_text(app, name):
    """The text in the shown editable text field called `name`, or None."""
    for node in walk(app):
        try:
            if node.name == name and is_shown(node):
                node.queryEditableText()  # a label of the same name is not a field
                text = node.queryText()
                # GTK 4.8 answers an end offset of -1 ("to the end") with nothing.
                return text.getText(0, text.characterCount)
        except Exception:  # not a text field, or gone
            continue
    return None


def press(title, keys):
    """Focuses the window titled `title` and types `keys` (xdotool names) through XTEST.

    No window manager runs under Xvfb, so the window gets the input focus directly. The
    keys go through XTEST, not to a window id, so their release still arrives when they
    close the window: a key left down would auto-repeat into the next window.
    """
    subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", f"^{title}$",
                    "windowfocus", "--sync"], check=True)
    subprocess.run(["xdotool", "key", "--clearmodifiers", *keys.split()], check=True)


def type_text(title, text):
    """Focuses the window titled `title` and types `text` through XTEST."""
    subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", f"^{title}$",
                    "windowfocus", "--sync"], check=True)
    subprocess.run(["xdotool", "type", "--delay", "20", text], check=True)


def window_size(title):
    """The X window size of the visible window titled `title` (CSD shadow included)."""
    result = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{title}$",
                             "getwindowgeometry", "--shell"],
                            capture_output=True, text=True, check=False)
    fields = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    if "WIDTH" not in fields:
        return None
    return (int(fields["WIDTH"]), int(fields["HEIGHT"]))


def is_fullscreen(title):
    """Whether the window manager shows the visible window titled `title` fullscreen
    (_NET_WM_STATE holds _NET_WM_STATE_FULLSCREEN)."""
    ids = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{title}$"],
                         capture_output=True, text=True, check=False).stdout.split()
    for window in ids:
        state = subprocess.run(["xprop", "-id", window, "_NET_WM_STATE"],
                               capture_output=True, text=True, check=False).stdout
        if "_NET_WM_STATE_FULLSCREEN" in state:
            return True
    return False


def window_origin(title):
    """The root-window position of the visible X window titled `title`."""
    result = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{title}$",
                             "getwindowgeometry", "--shell"],
                            capture_output=True, text=True, check=True)
    fields = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    return (int(fields["X"]), int(fields["Y"]))


def screenshot_pixel(path, x, y):
    """The colour at (x, y) of a PNG as (r, g, b), read with ImageMagick."""
    result = subprocess.run(["convert", path, "-crop", f"1x1+{x}+{y}", "-depth", "8",
                             "txt:-"], capture_output=True, text=True, check=True)
    hex_colour = result.stdout.splitlines()[-1].split("#")[1][:6]
    return tuple(int(hex_colour[i:i + 2], 16) for i in (0, 2, 4))


def check_screen_pixels(app, args):
    """Takes screenshots until the guest pixels match (see `screen_pixel_failures`)."""
    failures = []

    def matched():
        nonlocal failures
        subprocess.run(["import", "-window", "root", args.screenshot], check=True)
        failures = screen_pixel_failures(app, args)
        return not failures

    wait_for(matched, args.timeout, f"the guest's picture in {args.screen!r}",
             lambda: "; ".join(failures))
    print(f"library.py: {len(args.pixel)} guest pixels match in {args.screen!r}, "
          f"screenshot {args.screenshot}")


def screen_extents(app, name):
    """The window-relative extents of the shown guest screen called `name`, or None."""
    screens = [node for node in walk(app) if node.name == name and is_shown(node)]
    if not screens:
        return None
    return screens[-1].queryComponent().getExtents(pyatspi.WINDOW_COORDS)


def qmp_screendump_size(qmp_socket, png):
    """Asks the VM for a QMP screendump into `png` and returns its (width, height)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(qmp_socket)
        replies = s.makefile("r")
        replies.readline()  # the greeting
        for command in ({"execute": "qmp_capabilities"},
                        {"execute": "screendump", "arguments": {"filename": png}}):
            s.sendall(json.dumps(command).encode() + b"\n")
            while True:
                reply = json.loads(replies.readline())
                if "error" in reply:
                    raise RuntimeError(f"QMP {command['execute']}: {reply['error']}")
                if "return" in reply:
                    break
    with open(png, "rb") as f:
        header = f.read(24)
    # PNG signature, IHDR length and type, then width and height.
    return struct.unpack(">II", header[16:24])


def wait_for_guest_to_fill_screen(app, args):
    """Waits until the guest's resolution (a QMP screendump) is the size of the shown
    `args.screen`, then takes that as `args.guest_size`."""
    # Next to the QMP socket: the helper's sandbox lets it write only in its own folders.
    png = os.path.join(os.path.dirname(os.path.abspath(args.qmp)), "qmp-screendump.png")
    sizes = {}

    def filled():
        box = screen_extents(app, args.screen)
        sizes["screen"] = box and (box.width, box.height)
        sizes["guest"] = qmp_screendump_size(args.qmp, png)
        return sizes["guest"] == sizes["screen"]

    wait_for(filled, args.timeout, f"the guest's resolution to be the size of {args.screen!r}",
             lambda: f"guest {sizes.get('guest')}, screen {sizes.get('screen')}")
    args.guest_size = list(sizes["guest"])
    print(f"library.py: the guest shows {sizes['guest']}, the size of {args.screen!r}")


def screen_pixel_failures(app, args):
    """Finds where the guest screen `args.screen` is drawn (scaled to fit, centred) and
    compares guest pixels with the screenshot, ±8 per channel for scaling. Negative guest
    coordinates count from the right or bottom edge."""
    box = screen_extents(app, args.screen)
    if box is None:
        return [f"no shown {args.screen!r}"]
    # GTK 4 reports no screen coordinates: add the X window's origin to window ones.
    origin = window_origin(args.title)
    box_x, box_y = origin[0] + box.x, origin[1] + box.y
    gw, gh = args.guest_size
    scale = min(box.width / gw, box.height / gh)
    left = box_x + (box.width - gw * scale) / 2
    top = box_y + (box.height - gh * scale) / 2
    failures = []
    for gx, gy, want in args.pixel:
        gx, gy = int(gx) % gw, int(gy) % gh
        sx = int(left + (gx + 0.5) * scale)
        sy = int(top + (gy + 0.5) * scale)
        got = screenshot_pixel(args.screenshot, sx, sy)
        expected = tuple(int(want[i:i + 2], 16) for i in (0, 2, 4))
        if any(abs(a - b) > 8 for a, b in zip(got, expected)):
            failures.append(f"guest ({gx},{gy}) at screen ({sx},{sy}) is "
                            f"{bytes(got).hex()}, not {want}")
    if failures:
        failures.insert(0, f"{args.screen!r} at ({box_x},{box_y}) size "
                           f"{box.width}x{box.height}")
    return failures


def wait_for(predicate, timeout, what, describe=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    detail = f" ({describe()})" if describe else ""
    sys.exit(f"library.py: timed out after {timeout}s waiting for {what}{detail}")


def check(app, expect, absent, contains, timeout):
    """Waits until every `expect` name and `contains` substring shows and no `absent` one does."""

    def satisfied():
        texts = showing_texts(app)
        ok = all(name in texts for name in expect)
        ok = ok and all(any(part in text for text in texts) for part in contains)
        ok = ok and not any(name in texts for name in absent)
        return texts if ok else None

    def report():
        texts = showing_texts(app)
        missing = [n for n in expect if n not in texts]
        missing += [p for p in contains if not any(p in t for t in texts)]
        unwanted = [n for n in absent if n in texts]
        shown = "".join(f"\n  {role}: {name!r}" for name, role in sorted(texts.items()))
        return f"missing {missing}, unexpectedly showing {unwanted}; on screen:{shown}"

    return wait_for(satisfied, timeout, "the expected texts", report)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--expect", action="append", default=[], help="a name that must show")
    parser.add_argument("--contains", action="append", default=[],
                        help="a substring some showing name must contain")
    parser.add_argument("--absent", action="append", default=[], help="a name that must not show")
    parser.add_argument("--title", default="Hospes", help="the window title")
    parser.add_argument("--click", help="the name of a shown button to press first")
    parser.add_argument("--keys", help="xdotool key names to press first, e.g. F5")
    parser.add_argument("--type", dest="text", help="text to type after --keys")
    parser.add_argument("--set-text", nargs=2, action="append", default=[],
                        metavar=("NAME", "TEXT"),
                        help="set the text of the shown text field called NAME first "
                        "(repeatable)")
    parser.add_argument("--keys-after", help="xdotool key names to press after --type")
    parser.add_argument("--checked", nargs=2, action="append", default=[],
                        metavar=("NAME", "on|off"),
                        help="the shown switch called NAME must be on or off (repeatable)")
    parser.add_argument("--toggle", action="append", default=[], metavar="NAME",
                        help="flip the shown switch called NAME first, before --set-text "
                        "(repeatable)")
    parser.add_argument("--resize", nargs=2, type=int, metavar=("WIDTH", "HEIGHT"),
                        help="resize the window (after the checks pass)")
    parser.add_argument("--window-size", nargs=2, type=int, metavar=("WIDTH", "HEIGHT"),
                        help="the size the window must have")
    parser.add_argument("--text", dest="field_texts", nargs=2, action="append", default=[],
                        metavar=("NAME", "TEXT"),
                        help="the shown text field called NAME must hold TEXT (repeatable)")
    parser.add_argument("--fullscreen", choices=["on", "off"],
                        help="the window manager must show the window fullscreen or not "
                        "(checked before --window-size)")
    parser.add_argument("--close-keys",
                        help="keys that close the window (after everything else); waits for it")
    parser.add_argument("--wheel", type=int, metavar="STEPS",
                        help="turn the mouse wheel down this many steps after --mouse")
    parser.add_argument("--mouse", nargs=2, type=int, metavar=("X", "Y"),
                        help="move the pointer to this screen point first (xdotool)")
    parser.add_argument("--screenshot", help="PNG path for a screenshot once the checks pass")
    parser.add_argument("--screen", help="the accessible name of a guest screen to sample "
                        "in the screenshot (with --guest-size and --pixel)")
    parser.add_argument("--guest-size", nargs=2, type=int, metavar=("WIDTH", "HEIGHT"),
                        help="the guest's resolution, drawn scaled to fit into --screen")
    parser.add_argument("--pixel", nargs=3, action="append", default=[],
                        metavar=("X", "Y", "RRGGBB"),
                        help="a guest pixel and the colour it must have in the screenshot")
    parser.add_argument("--qmp", help="the VM's QMP socket: wait until its screendump is as "
                        "large as --screen and take that as --guest-size")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()

    app = wait_for(find_app, args.timeout, "hospes on the AT-SPI bus")
    wait_for(lambda: has_window(app, args.title), args.timeout,
             f"a window titled {args.title!r}")
    for name in args.toggle:
        toggle(app, name, args.timeout)
    for name, text in args.set_text:
        set_text(app, name, text, args.timeout)
    if args.click:
        click(app, args.click, args.timeout)
    if args.keys:
        press(args.title, args.keys)
    if args.text:
        type_text(args.title, args.text)
    if args.keys_after:
        press(args.title, args.keys_after)
    if args.mouse:
        subprocess.run(["xdotool", "mousemove", *map(str, args.mouse)], check=True)
    if args.wheel:
        subprocess.run(["xdotool", "click", "--repeat", str(args.wheel), "--delay", "20", "5"],
                       check=True)
    texts = check(app, args.expect, args.absent, args.contains, args.timeout)
    for name, want in args.checked:
        node = find_switch(app, name, args.timeout)
        wait_for(lambda: node.getState().contains(pyatspi.STATE_CHECKED) == (want == "on"),
                 args.timeout, f"the switch {name!r} to be {want}")
    print(f"library.py: ok, {len(texts)} named accessibles showing")
    for name, want_text in args.field_texts:
        wait_for(lambda: field_text(app, name) == want_text, args.timeout,
                 f"the field {name!r} to hold {want_text!r}",
                 lambda: f"it holds {field_text(app, name)!r}")
    if args.fullscreen:
        want = args.fullscreen == "on"
        wait_for(lambda: is_fullscreen(args.title) == want, args.timeout,
                 f"the window to be fullscreen {args.fullscreen}")
        print(f"library.py: fullscreen {args.fullscreen}")
    if args.window_size:
        wait_for(lambda: window_size(args.title) == tuple(args.window_size),
                 args.timeout, f"the window to be {args.window_size}",
                 lambda: f"it is {window_size(args.title)}")
        print(f"library.py: window is {args.window_size}")
    if args.resize:
        subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name",
                        f"^{args.title}$", "windowsize", "--sync",
                        *map(str, args.resize)], check=True)
    if args.close_keys:
        press(args.title, args.close_keys)
        wait_for(lambda: find_app() is None, args.timeout, "the app to quit")
        print("library.py: window closed, app quit")
    if args.screenshot:
        time.sleep(0.5)  # let the last frame reach the X server
        subprocess.run(["import", "-window", "root", args.screenshot], check=True)
        print(f"library.py: screenshot {args.screenshot}")
    if args.qmp:
        wait_for_guest_to_fill_screen(app, args)
    if args.screen:
        check_screen_pixels(app, args)


if __name__ == "__main__":
    main()
