"""``vpr_ros_check_graph``: before a graph goes to the robot, list every node TensorRT's ONNX parser
would refuse, by rule and with the rule's source (onnx-tensorrt's importer assertions and operator
support matrix). Runs anywhere: TensorRT is not needed. Exit 0: TensorRT would parse it; 1: it
would refuse it (the nodes are listed); 2: the file or the version cannot be used."""
from __future__ import annotations

import argparse
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.errors import VprError

MAX_SIZE = 4 << 30  # bytes: a protobuf ONNX file cannot exceed 2 GiB; leave room for a wrong guess


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_check_graph", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", help="ONNX file (vpr_ros_export, vpr_ros_quantize, or any other)")
    ap.add_argument("--tensorrt", default="10.3", metavar="VERSION",
                    help="TensorRT version of the robot, MAJOR.MINOR (default: %(default)s, JetPack 6.1/6.2); "
                         "below 10 is refused")
    a = ap.parse_args(argv)
    try:
        from vpr_ros.export.tensorrt_rules import check_graph, parse_version
        from vpr_ros.files import check_readable_file

        parse_version(a.tensorrt)
        path = check_readable_file(Path(a.onnx), "ONNX file")
        if path.stat().st_size > MAX_SIZE:
            raise VprError(f"{path}: {path.stat().st_size} bytes is not an ONNX file (more than {MAX_SIZE} bytes)")
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise VprError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        refusals = check_graph(model, a.tensorrt)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_check_graph", exc)
    if not refusals:
        print(f"vpr_ros_check_graph: {path}: TensorRT {a.tensorrt}'s ONNX parser accepts all "
              f"{len(model.graph.node)} nodes")
        return 0
    for r in refusals:
        print(r.line())
    rules = sorted({r.rule for r in refusals})
    print(f"vpr_ros_check_graph: {path}: TensorRT {a.tensorrt} would refuse {len(refusals)} node(s) "
          f"(rules: {', '.join(rules)}); export it again with vpr_ros_export, which folds constants")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
