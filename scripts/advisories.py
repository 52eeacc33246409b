#!/usr/bin/env python3
"""Cargo.lock against a local copy of the RustSec advisory database, without network or cargo-audit.

    scripts/advisories.py ADVISORY_DB_DIR [Cargo.lock ...]

ADVISORY_DB_DIR is a checkout of github.com/rustsec/advisory-db (its crates/ folder is read). Prints
every locked crate version an advisory affects (withdrawn advisories skipped; informational ones such
as `unmaintained` marked), and exits 1 if any is not informational. Version requirements follow
Cargo's semver operators (^, ~, =, <, <=, >, >=; comma = and); pre-release tags compare as in semver.
"""
import pathlib
import re
import sys
import tomllib


def parse_version(text):
    text = text.strip().split("+", 1)[0]
    core, _, pre = text.partition("-")
    parts = [int(p) for p in core.split(".")]
    while len(parts) < 3:
        parts.append(0)
    # A release sorts after its pre-releases.
    pre_key = (1,) if not pre else (0, tuple((0, int(x)) if x.isdigit() else (1, x) for x in pre.split(".")))
    return (tuple(parts[:3]), pre_key)


def satisfies(version, requirement):
    """Whether `version` meets every comparator of `requirement` (comma-separated)."""
    for comparator in requirement.split(","):
        m = re.fullmatch(r"\s*(\^|~|=|<=|>=|<|>)?\s*([0-9][0-9A-Za-z.\-+]*)\s*", comparator)
        if not m:
            raise ValueError(f"unknown requirement {requirement!r}")
        op, raw = m.group(1) or "^", m.group(2)
        bound = parse_version(raw)
        given = len(raw.split("-", 1)[0].split("."))
        if op in ("^", "~"):
            major, minor, patch = bound[0]
            if op == "~":
                upper = (major, minor + 1, 0) if given >= 2 else (major + 1, 0, 0)
            elif major > 0 or given == 1:
                upper = (major + 1, 0, 0)
            elif minor > 0 or given == 2:
                upper = (0, minor + 1, 0)
            else:
                upper = (0, 0, patch + 1)
            if not (bound <= version < (upper, (0, ()))):
                return False
        elif op == "=":
            if version[0] != bound[0]:
                return False
        elif not {"<": version < bound, "<=": version <= bound, ">": version > bound, ">=": version >= bound}[op]:
            return False
    return True


def advisories(db):
    for path in sorted((db / "crates").glob("*/*.md")):
        text = path.read_text()
        block = re.search(r"```toml\n(.*?)\n```", text, re.S)
        if block:
            adv = tomllib.loads(block.group(1))
            heading = re.search(r"^# (.+)$", text[block.end():], re.M)
            adv["advisory"].setdefault("title", heading.group(1).strip() if heading else "")
            yield adv


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    db = pathlib.Path(sys.argv[1])
    locks = sys.argv[2:] or ["Cargo.lock"]
    locked = {}
    for lock in locks:
        for package in tomllib.loads(pathlib.Path(lock).read_text()).get("package", []):
            if package.get("source", "").startswith("registry+"):
                locked.setdefault(package["name"], set()).add(package["version"])
    by_crate = {}
    for adv in advisories(db):
        by_crate.setdefault(adv["advisory"]["package"], []).append(adv)
    affecting, checked = 0, 0
    for name, versions in sorted(locked.items()):
        for adv in by_crate.get(name, []):
            a = adv["advisory"]
            if a.get("withdrawn"):
                continue
            spec = adv.get("versions", {})
            for v in sorted(versions):
                checked += 1
                pv = parse_version(v)
                if any(satisfies(pv, r) for r in spec.get("patched", []) + spec.get("unaffected", [])):
                    continue
                kind = a.get("informational")
                print(f"{name} {v}: {a['id']} {a.get('title', '')}" + (f" [{kind}]" if kind else ""))
                affecting += 0 if kind else 1
    print(f"{sum(len(v) for v in locked.values())} locked crate versions, {checked} (crate version, advisory) "
          f"pairs checked, {affecting} affected by a vulnerability advisory")
    sys.exit(1 if affecting else 0)


if __name__ == "__main__":
    main()
