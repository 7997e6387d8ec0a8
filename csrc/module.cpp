// The Python module object of is_kernels._C. Importing it runs the TORCH_LIBRARY_FRAGMENT
// blocks of every csrc/<family>.cpp, which define the is_kernels::* ops and their CPU kernels.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
