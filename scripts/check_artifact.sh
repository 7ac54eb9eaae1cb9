#!/usr/bin/env bash
# The package as users get it: build the sdist and the wheel from a clean copy of the
# tracked files (a build/ or an egg-info left in the tree must not hide a gap), check
# them, then install the wheel, not the tree, into a fresh venv per extra and use it
# from a directory outside the checkout.
#
#   1. `python -m build` on a copy of `git ls-files`: the sdist, then the wheel built
#      from that sdist (so the sdist is proven complete too).
#   2. twine check --strict (metadata, the README renders), check-wheel-contents, and
#      every package of the tree (a folder with an __init__.py below aio_backoff/ or
#      nameko_bridge/) is in the wheel; LICENSE, CHANGELOG.md and both py.typed ship.
#   3. One venv per extra (none, nameko, faststream, otel, prometheus, plot), side by
#      side: `import aio_backoff` (its __version__ is pyproject's),
#      `aio-backoff --help`/`--version`, the extra's own module, `import nameko_bridge`
#      without loading aio-pika (nameko extra), and the README's example, extracted
#      from README.md and run as written against the broker
#      ($AIO_BACKOFF_AMQP_URL, default the local one).
#
# Usage: scripts/check_artifact.sh [EXTRA ...]   (default: every extra)
# Needs the dev venv (.venv, scripts/setup.sh: build, twine, check-wheel-contents).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
TOOLS=.venv/bin
EXTRAS=("$@")
((${#EXTRAS[@]})) || EXTRAS=(none nameko faststream otel prometheus plot)
export AIO_BACKOFF_AMQP_URL=${AIO_BACKOFF_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}

work=$(mktemp -d /tmp/aio-backoff-artifact.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "artifact: FAILED: $*" >&2
  exit 1
}

# 1. A clean copy, as a clone would have it, and the build.
mkdir "$work/src"
git ls-files -z | tar --null -T - -cf - | tar -x -C "$work/src"
"$TOOLS/python" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; fail "python -m build"; }
sdist=$(echo "$work"/dist/*.tar.gz)
wheel=$(echo "$work"/dist/*.whl)
echo "artifact: built $(basename "$sdist") and $(basename "$wheel")"

# 2. What was built.
"$TOOLS/twine" check --strict "$sdist" "$wheel"
"$TOOLS/check-wheel-contents" --toplevel aio_backoff,nameko_bridge "$wheel"
"$TOOLS/python" - "$wheel" "$sdist" <<'PY' || fail "the wheel or the sdist lacks files"
import pathlib, sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
in_wheel = set(zipfile.ZipFile(wheel).namelist())
root = tarfile.open(sdist).getnames()[0].split("/")[0]
in_sdist = {name.removeprefix(root + "/") for name in tarfile.open(sdist).getnames()}
missing = []
for init in sorted(pathlib.Path(".").glob("*/**/__init__.py")):
    if init.parts[0] in {"aio_backoff", "nameko_bridge"}:
        missing += [f"wheel: {init}"] * (str(init) not in in_wheel)
        missing += [f"sdist: {init}"] * (str(init) not in in_sdist)
for name in ("aio_backoff/py.typed", "nameko_bridge/py.typed"):
    missing += [f"wheel: {name}"] * (name not in in_wheel)
licence = [n for n in in_wheel if n.endswith(".dist-info/licenses/LICENSE")]
missing += ["wheel: LICENSE"] * (not licence)
missing += [f"sdist: {n}" for n in ("LICENSE", "CHANGELOG.md", "README.md") if n not in in_sdist]
for line in missing:
    print(f"  missing from the {line}")
sys.exit(1 if missing else 0)
PY
echo "artifact: every package, py.typed, LICENSE and CHANGELOG.md are in the artifacts"

# The README's example, as written: the block tests/aio/test_readme.py runs too.
"$TOOLS/python" -c 'from tests.aio.test_readme import readme_example
print(readme_example(), end="")' >"$work/readme_example.py"

version=$("$TOOLS/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

# 3. One venv per extra, side by side; each writes its own log.
check_extra() {  # extra
  local extra=$1 venv=$work/venv-$1 spec=$wheel
  [[ $extra == none ]] || spec="$wheel[$extra]"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$spec"
  cd "$work"  # outside the checkout: only the installed wheel can be imported
  "$venv/bin/python" - "$version" <<'PY'
import pathlib, sys
import aio_backoff
assert "site-packages" in aio_backoff.__file__, aio_backoff.__file__
assert aio_backoff.__version__ == sys.argv[1], (aio_backoff.__version__, sys.argv[1])
for name in aio_backoff.__all__:
    getattr(aio_backoff, name)  # every public name resolves, the lazy ones too
print(f"import aio_backoff {aio_backoff.__version__}: {len(aio_backoff.__all__)} names")
PY
  "$venv/bin/aio-backoff" --help >/dev/null
  [[ $("$venv/bin/aio-backoff" --version) == "aio-backoff $version" ]]
  case $extra in
  nameko)
    "$venv/bin/python" -c '
import sys
import nameko_bridge
assert "aio_pika" not in sys.modules, "nameko_bridge loaded aio-pika"
print("import nameko_bridge: aio-pika not loaded")' ;;
  faststream) "$venv/bin/python" -c 'import aio_backoff.faststream' ;;
  otel) "$venv/bin/python" -c 'import aio_backoff.otel' ;;
  prometheus) "$venv/bin/python" -c 'import aio_backoff.prometheus' ;;
  plot) "$venv/bin/aio-backoff" preview aio_backoff:Backoff --plot "$work/plot.png" >/dev/null
    [[ -s $work/plot.png ]] ;;
  esac
  "$venv/bin/python" "$work/readme_example.py"
}
pids=()
for extra in "${EXTRAS[@]}"; do
  (check_extra "$extra" >"$work/$extra.log" 2>&1) &
  pids+=($!)
done
failed=()
for i in "${!EXTRAS[@]}"; do
  if wait "${pids[$i]}"; then
    echo "artifact: [${EXTRAS[$i]}] ok: $(tail -n 1 "$work/${EXTRAS[$i]}.log")"
  else
    echo "artifact: [${EXTRAS[$i]}] FAILED:" >&2
    sed 's/^/    /' "$work/${EXTRAS[$i]}.log" >&2
    failed+=("${EXTRAS[$i]}")
  fi
done
((${#failed[@]} == 0)) || fail "the installed wheel did not work with: ${failed[*]}"
echo "artifact: the wheel installs and works outside the tree with every extra (${EXTRAS[*]})"
