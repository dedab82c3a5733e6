// Python module entry point of sparsevision._C.
//
// The op schemas are defined in Python (sparsevision/ops/library.py) before
// this module is imported; the C++ and CUDA files only register kernels for
// them with TORCH_LIBRARY_IMPL. The module itself exposes one constant,
// WITH_CUDA, so Python can report what was compiled in.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "sparsevision native kernels", -1, nullptr};
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
