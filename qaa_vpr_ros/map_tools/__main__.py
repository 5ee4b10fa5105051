"""``python -m qaa_vpr_ros.map_tools {build,merge,info,eval,export} ...``: the map tools in one entry point."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "build": ("qaa_vpr_ros.map_tools.build", "build a map from rosbag2 recordings (build_map)"),
    "merge": ("qaa_vpr_ros.map_tools.merge", "merge shards and sessions into one map (merge_maps)"),
    "info": ("qaa_vpr_ros.map_tools.info", "summarise a map and plot its keyframes (map_info)"),
    "eval": ("qaa_vpr_ros.map_tools.evaluate", "Recall@K and precision-recall against ground truth (eval_map)"),
    "export": ("qaa_vpr_ros.map_tools.export", "export keyframes as a training dataset (export_map)"),
}
ALIASES = {"build_map": "build", "merge_maps": "merge", "map_info": "info", "eval_map": "eval",
           "evaluate": "eval", "export_map": "export"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = ALIASES.get(args[0], args[0]) if args else None
    if command not in COMMANDS:
        lines = ["usage: python -m qaa_vpr_ros.map_tools COMMAND [args...]", "", "commands:"]
        lines += [f"  {name:<7} {help_text}" for name, (_, help_text) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
