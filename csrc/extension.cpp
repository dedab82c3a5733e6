// Python module entry point of sparsevision._C.
//
// The op schemas are defined in Python (sparsevision/ops/library.py) before
// this module is imported; the C++ and CUDA files only register kernels for
// them with TORCH_LIBRARY_IMPL. The module itself exposes the constant
// WITH_CUDA, so Python can report what was compiled in, and the controls of the
// recycled CPU output buffers (csrc/cpu/recycled_buffers.h), wrapped by
// sparsevision/ops/recycled_buffers.py.
#include <Python.h>

#include <exception>

#include "cpu/recycled_buffers.h"

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

PyMethodDef methods[] = {
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
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
