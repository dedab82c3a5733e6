// Python module entry point of sparsevision._C.
//
// The op schemas are defined in Python (sparsevision/ops/schemas.py) before this module is imported. The module
// exposes:
// - WITH_CUDA, so Python can report what was compiled in;
// - SCHEMA_FINGERPRINT, the fingerprint of the schemas it was built for (setup.py passes it in);
// - register_kernels(), which registers the C++ and CUDA kernels (csrc/registration.h). Python calls it only when the
//   fingerprints agree, and a registration error becomes a RuntimeError instead of aborting the process;
// - the controls of the recycled CPU output buffers (csrc/cpu/recycled_buffers.h), wrapped by
//   sparsevision/ops/recycled_buffers.py.
#include <Python.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cpu/recycled_buffers.h"
#include "registration.h"

#ifndef SV_SCHEMA_FINGERPRINT
#define SV_SCHEMA_FINGERPRINT unknown
#endif
#define SV_STRING(text) #text
#define SV_EXPANDED_STRING(text) SV_STRING(text)

namespace {

PyObject* set_recycled_limit(PyObject*, PyObject* args) {
  long long bytes = 0;
  if (!PyArg_ParseTuple(args, "L", &bytes)) return nullptr;
  try {
    return PyLong_FromLongLong(sparsevision::set_recycled_limit(bytes));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
}

PyObject* release_recycled_buffers(PyObject*, PyObject*) {
  return PyLong_FromLongLong(sparsevision::release_recycled_buffers());
}

PyObject* idle_recycled_bytes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(sparsevision::idle_recycled_bytes());
}

// Registers every kernel, once: a later call repeats the first call's outcome. The libraries live until the process
// exits, as static registrations would.
PyObject* register_kernels(PyObject*, PyObject*) {
  static std::vector<std::unique_ptr<torch::Library>> libraries;
  static bool attempted = false;
  static std::string failure;
  if (attempted) {
    if (failure.empty()) Py_RETURN_NONE;
    PyErr_SetString(PyExc_RuntimeError, failure.c_str());
    return nullptr;
  }
  attempted = true;
  try {
    auto library = [](c10::DispatchKey key) {
      libraries.push_back(std::make_unique<torch::Library>(torch::Library::IMPL, "sparsevision", key, __FILE__,
                                                           __LINE__));
      return libraries.back().get();
    };
    torch::Library* cpu = library(c10::DispatchKey::CPU);
    for (auto kernels : {sparsevision::register_batch_norm_cpu, sparsevision::register_kernel_map_cpu,
                         sparsevision::register_sparse_conv_cpu, sparsevision::register_spike_conv_cpu,
                         sparsevision::register_token_merge_cpu, sparsevision::register_token_routing_cpu,
                         sparsevision::register_token_select_cpu}) {
      kernels(*cpu);
    }
#ifdef WITH_CUDA
    torch::Library* cuda = library(c10::DispatchKey::CUDA);
    for (auto kernels : {sparsevision::register_kernel_map_cuda, sparsevision::register_gather_gemm_conv_cuda,
                         sparsevision::register_token_merge_cuda, sparsevision::register_token_routing_cuda,
                         sparsevision::register_token_select_cuda}) {
      kernels(*cuda);
    }
#endif
  } catch (const std::exception& error) {
    failure = error.what();
    PyErr_SetString(PyExc_RuntimeError, failure.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"register_kernels", register_kernels, METH_NOARGS,
     "Registers the native kernels for the sparsevision op schemas (once)."},
    {"set_recycled_limit", set_recycled_limit, METH_VARARGS,
     "Caps the bytes of idle recycled buffers (0: off); returns the previous cap."},
    {"release_recycled_buffers", release_recycled_buffers, METH_NOARGS,
     "Frees every idle recycled buffer; returns the bytes freed."},
    {"idle_recycled_bytes", idle_recycled_bytes, METH_NOARGS, "Bytes held by idle recycled buffers."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "sparsevision native kernels", -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0 ||
      PyModule_AddStringConstant(module, "SCHEMA_FINGERPRINT", SV_EXPANDED_STRING(SV_SCHEMA_FINGERPRINT)) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
