#!/usr/bin/python3
"""Writes flatpak/cargo-sources.json: every crate in Cargo.lock as a flatpak-builder source.

flatpak-builder builds without network, so each crates.io package becomes an `archive`
source (the .crate file with the sha256 Cargo.lock records) unpacked into
`cargo/vendor/<name>-<version>/`, next to the `.cargo-checksum.json` cargo expects in a
vendored directory, plus a `cargo/config.toml` that points crates-io at that directory.
The manifest's hospes module sets CARGO_HOME to that `cargo/` folder.

Usage: scripts/flatpak-cargo-sources.py          rewrite flatpak/cargo-sources.json
       scripts/flatpak-cargo-sources.py --check  fail if it is out of date with Cargo.lock
"""

import json
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK = ROOT / "Cargo.lock"
OUTPUT = ROOT / "flatpak" / "cargo-sources.json"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
VENDOR = "cargo/vendor"

CARGO_CONFIG = f"""[source.vendored-sources]
directory = "{VENDOR}"

[source.crates-io]
replace-with = "vendored-sources"
"""


def sources(lock):
    out = []
    for package in sorted(lock.get("package", []), key=lambda p: (p["name"], p["version"])):
        source = package.get("source")
        if source is None:  # a workspace member, built from the checkout
            continue
        if source != CRATES_IO:
            sys.exit(f"flatpak-cargo-sources: {package['name']} comes from {source}; "
                     "only crates.io packages are supported")
        name, version, checksum = package["name"], package["version"], package["checksum"]
        dest = f"{VENDOR}/{name}-{version}"
        out.append({
            "type": "archive",
            "archive-type": "tar-gzip",
            "url": f"https://static.crates.io/crates/{name}/{name}-{version}.crate",
            "sha256": checksum,
            "dest": dest,
        })
        out.append({
            "type": "inline",
            "contents": json.dumps({"package": checksum, "files": {}}),
            "dest": dest,
            "dest-filename": ".cargo-checksum.json",
        })
    out.append({
        "type": "inline",
        "contents": CARGO_CONFIG,
        "dest": "cargo",
        "dest-filename": "config.toml",
    })
    return out


def main():
    with LOCK.open("rb") as f:
        text = json.dumps(sources(tomllib.load(f)), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.exit("flatpak-cargo-sources: flatpak/cargo-sources.json is out of date with "
                     "Cargo.lock; run scripts/flatpak-cargo-sources.py")
        print("flatpak-cargo-sources: flatpak/cargo-sources.json matches Cargo.lock")
        return
    if sys.argv[1:]:
        sys.exit(__doc__)
    OUTPUT.write_text(text)
    print(f"flatpak-cargo-sources: wrote {OUTPUT.relative_to(ROOT)} "
          f"({(len(json.loads(text)) - 1) // 2} crates)")


if __name__ == "__main__":
    main()
