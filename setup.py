"""The optional compiled quantizers (``llama_convert/formats/gguf/quants/_native.c``) and multi-buffer MD5
(``llama_convert/_md5lanes.c``); everything else is in pyproject.toml. Without a C compiler the build skips them:
the numpy kernels (same bytes) quantize and hashlib verifies checksums, one file per thread."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# float32 arithmetic exactly as written: no FMA contraction, no fast-math (the bytes must equal llama.cpp's)
FLAGS = {"msvc": ["/O2", "/fp:precise"]}
DEFAULT_FLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math"]


class BuildExt(build_ext):
    def build_extensions(self):
        for ext in self.extensions:
            ext.extra_compile_args = FLAGS.get(self.compiler.compiler_type, DEFAULT_FLAGS)
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "llama_convert.formats.gguf.quants._native",
            ["llama_convert/formats/gguf/quants/_native.c"],
            depends=["llama_convert/formats/gguf/quants/_native_lanes.h"],
            optional=True,
        ),
        Extension("llama_convert._md5lanes", ["llama_convert/_md5lanes.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
