"""Build hook: generate the gRPC/protobuf Python modules from protos/ with grpcio-tools.

Generated files land in services/footfall/proto/ (git-ignored) before the package is built,
for regular and editable installs alike.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def generate_protos() -> None:
    from grpc_tools import protoc
    import grpc_tools

    proto_dir = ROOT / "protos"
    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in sorted(proto_dir.rglob("*.proto")):
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={ROOT / 'services'}",
                          f"--pyi_out={ROOT / 'services'}", f"--grpc_python_out={ROOT / 'services'}", str(proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
