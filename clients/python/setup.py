"""Builds the package with its gRPC stubs generated from framesrv's proto/ (never committed):
`pip install ./clients/python` from a framesrv checkout."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO = "framesrv/v1/framesrv.proto"


def proto_root() -> Path:
    # The checkout's proto/ (an in-tree build), or a copy beside this file (an sdist).
    for root in (HERE.parent.parent / "proto", HERE / "proto"):
        if (root / PROTO).is_file():
            return root
    raise SystemExit(f"{PROTO} not found: build this package from a framesrv checkout (clients/python)")


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        import grpc_tools
        from grpc_tools import protoc

        root, out = proto_root(), Path(self.build_lib)
        includes = Path(grpc_tools.__file__).parent / "_proto"
        args = ["protoc", f"-I{root}", f"-I{includes}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(root / PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("generating the gRPC stubs failed")
        (out / "framesrv" / "v1" / "__init__.py").touch()


setup(cmdclass={"build_py": BuildWithStubs})
