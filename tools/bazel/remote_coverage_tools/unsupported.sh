#!/bin/sh
echo "bazel coverage is not supported in Tether's offline build; measure Python coverage with pytest" >&2
exit 1
