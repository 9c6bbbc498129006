#!/usr/bin/python3
"""Checks flatpak/io.github.hospes.Hospes.yml without network (Debian's python3-yaml).

- the app id matches the one the desktop file, metainfo and schema use, and `command` is
  the app binary;
- a GNOME runtime with the Rust SDK extension;
- finish-args give /dev/kvm but not every device, and never the whole host filesystem;
- the passt, OVMF and hospes modules are there; every git source is pinned by a tag or
  commit and every archive by a sha256;
- the hospes module builds from the vendored crates (cargo-sources.json), and every
  package in Cargo.lock can be vendored that way;
- the files the hospes module installs exist in the checkout.
"""

import importlib.util
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP_ID = "io.github.hospes.Hospes"
MANIFEST = ROOT / "flatpak" / f"{APP_ID}.yml"
REQUIRED_MODULES = ("passt", "ovmf", "hospes")
FORBIDDEN_ARGS = ("--device=all", "--filesystem=host", "--filesystem=host-os",
                  "--filesystem=home", "--filesystem=/")


def load_cargo_sources_module():
    spec = importlib.util.spec_from_file_location(
        "flatpak_cargo_sources", ROOT / "scripts" / "flatpak-cargo-sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(manifest):
    errors = []

    def need(condition, message):
        if not condition:
            errors.append(message)

    need(manifest.get("app-id") == APP_ID, f"app-id must be {APP_ID}")
    need(manifest.get("command") == "hospes", "command must be hospes")
    need(manifest.get("runtime") == "org.gnome.Platform", "runtime must be org.gnome.Platform")
    need(manifest.get("sdk") == "org.gnome.Sdk", "sdk must be org.gnome.Sdk")
    need(re.fullmatch(r"\d+", str(manifest.get("runtime-version", ""))),
         "runtime-version must be a GNOME release number")
    need("org.freedesktop.Sdk.Extension.rust-stable" in manifest.get("sdk-extensions", []),
         "sdk-extensions must include org.freedesktop.Sdk.Extension.rust-stable")

    args = manifest.get("finish-args", [])
    need("--device=kvm" in args, "finish-args must have --device=kvm")
    for arg in FORBIDDEN_ARGS:
        need(not any(a == arg or a.startswith(arg + ":") for a in args),
             f"finish-args must not have {arg}")
    for arg in ("--socket=wayland", "--socket=fallback-x11", "--share=ipc",
                "--filesystem=xdg-run/pipewire-0"):
        need(arg in args, f"finish-args must have {arg}")

    modules = {m.get("name"): m for m in manifest.get("modules", []) if isinstance(m, dict)}
    for name in REQUIRED_MODULES:
        need(name in modules, f"module {name} is missing")
    for name, module in modules.items():
        for source in module.get("sources", []):
            if not isinstance(source, dict):
                continue
            kind = source.get("type")
            if kind == "git":
                need(source.get("url") and (source.get("tag") or source.get("commit")),
                     f"module {name}: git source needs a url and a tag or commit")
            elif kind in ("archive", "file"):
                need(re.fullmatch(r"[0-9a-f]{64}", str(source.get("sha256", ""))),
                     f"module {name}: {kind} source needs a real sha256")

    hospes = modules.get("hospes", {})
    need("cargo-sources.json" in hospes.get("sources", []),
         "module hospes must use cargo-sources.json (scripts/flatpak-cargo-sources.py)")
    commands = "\n".join(hospes.get("build-commands", []))
    need("--offline" in commands, "module hospes must build with cargo --offline")
    env = hospes.get("build-options", {}).get("env", {})
    need(env.get("CARGO_HOME") == "/run/build/hospes/cargo",
         "module hospes must set CARGO_HOME to the vendored cargo/ folder")
    for path in re.findall(r"\bresources/\S+", commands):
        need((ROOT / path).exists(), f"module hospes installs {path}, which does not exist")
    for script in re.findall(r"\bscripts/\S+", commands):
        need((ROOT / script).exists(), f"module hospes runs {script}, which does not exist")

    try:
        import tomllib
        with (ROOT / "Cargo.lock").open("rb") as f:
            load_cargo_sources_module().sources(tomllib.load(f))
    except SystemExit as err:
        errors.append(str(err))
    return errors


def main():
    with MANIFEST.open() as f:
        manifest = yaml.safe_load(f)
    errors = check(manifest)
    for error in errors:
        print(f"check-flatpak: {MANIFEST.relative_to(ROOT)}: {error}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"check-flatpak: {MANIFEST.relative_to(ROOT)} is well-formed")


if __name__ == "__main__":
    main()
