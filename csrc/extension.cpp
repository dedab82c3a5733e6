// Python module entry point of sparsevision._C.
//
// The op schemas are defined in Python (sparsevision/ops/schemas.py) before this module is imported. The module
// exposes:
// - WITH_CUDA, so Python can report what was compiled in;
// - SCHEMA_FINGERPRINT, the fingerprint of the schemas it was built for (setup.py passes it in);
// - register_kernels(), which registers the C++ and CUDA kernels (csrc/registration.h). Python calls it only when the
//   fingerprints agree, and a registration error becomes a RuntimeError instead of aborting the process;
// - the controls of the recycled CPU output buffers (csrc/cpu/recycled_buffers.h), wrapped by
//   sparsevision/ops/recycled_buffers.py;
// - the CPU sparse convolution's path choice and this thread's forced path (csrc/cpu/conv_algorithm.h), wrapped by
//   sparsevision/ops/conv_algorithms.py.
#include <Python.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cpu/conv_algorithm.h"
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

// The ConvAlgorithm value of the path a CPU sparse_conv with this weight shape and dtype takes (the forced one, if it
// can take the shapes).
PyObject* conv_algorithm(PyObject*, PyObject* args) {
  long long in_channels = 0, out_channels = 0, taps = 0, groups = 0;
  const char* dtype = nullptr;
  if (!PyArg_ParseTuple(args, "LLLLs", &in_channels, &out_channels, &taps, &groups, &dtype)) return nullptr;
  try {
    TORCH_CHECK_VALUE(groups >= 1, "sparse_conv: groups must be >= 1, got ", groups);
    const sparsevision::ConvProblem problem{in_channels, out_channels, taps, groups,
                                            sparsevision::floating_dtype_named(dtype)};
    return PyUnicode_FromString(sparsevision::algorithm_name(sparsevision::conv_algorithm_for(problem)));
  } catch (const c10::ValueError& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

// The WeightGradAlgorithm value of the path a CPU sparse_conv_weight_grad with `groups` groups takes.
PyObject* weight_grad_algorithm(PyObject*, PyObject* args) {
  long long groups = 0;
  if (!PyArg_ParseTuple(args, "L", &groups)) return nullptr;
  return PyUnicode_FromString(sparsevision::algorithm_name(sparsevision::choose_weight_grad_algorithm(groups)));
}

PyObject* force_conv_algorithm(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "z", &name)) return nullptr;
  sparsevision::force_conv_algorithm(name == nullptr ? "" : name);
  Py_RETURN_NONE;
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
    for (auto kernels : {sparsevision::register_batch_norm_cpu, sparsevision::register_indexed_attention_cpu,
                         sparsevision::register_kernel_map_cpu, sparsevision::register_sparse_conv_cpu,
                         sparsevision::register_spike_conv_cpu, sparsevision::register_token_merge_cpu,
                         sparsevision::register_token_routing_cpu, sparsevision::register_token_select_cpu}) {
      kernels(*cpu);
    }
#ifdef WITH_CUDA
    torch::Library* cuda = library(c10::DispatchKey::CUDA);
    for (auto kernels : {sparsevision::register_gather_gemm_conv_cuda, sparsevision::register_indexed_attention_cuda,
                         sparsevision::register_kernel_map_cuda, sparsevision::register_token_merge_cuda,
                         sparsevision::register_token_routing_cuda, sparsevision::register_token_select_cuda}) {
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
    {"conv_algorithm", conv_algorithm, METH_VARARGS,
     "conv_algorithm(in_channels, out_channels, taps, groups, dtype_name): the CPU sparse_conv path such a call "
     "takes in this thread."},
    {"weight_grad_algorithm", weight_grad_algorithm, METH_VARARGS,
     "weight_grad_algorithm(groups): the CPU sparse_conv_weight_grad path."},
    {"force_conv_algorithm", force_conv_algorithm, METH_VARARGS,
     "force_conv_algorithm(name or None): forces (or, with None, stops forcing) this thread's CPU sparse_conv path; "
     "a call the path cannot take raises ValueError."},
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
