// The Python module learnedopt._C. It holds no Python functions: importing it loads this library,
// whose static initialisers register the ops (schema.cpp) and their kernels (cpu/, cuda/).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
