// The Python module learnedopt._C. Importing it loads this library, whose static initialisers
// register the ops (schema.cpp) and their kernels (cpu/, cuda/); the ops are reached through
// torch.ops.learnedopt, not through this module. Its one Python function is outside the op
// schema: cpu_fp32_peak, the FP32 FMA-throughput probe (cpu/fma_peak.h) that bench/machine.py
// takes as the CPU's FP32 ceiling.
#include <Python.h>

#include "cpu/fma_peak.h"

namespace {

PyObject* cpu_fp32_peak(PyObject* /*module*/, PyObject* arg) {
  if (!PyLong_Check(arg) || PyBool_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "cpu_fp32_peak: iterations must be an int, not %.200s",
                 Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  const long long iterations = PyLong_AsLongLong(arg);
  if (iterations == -1 && PyErr_Occurred()) return nullptr;  // OverflowError
  if (iterations < 1) {
    PyErr_Format(PyExc_ValueError, "cpu_fp32_peak: iterations must be >= 1, got %lld", iterations);
    return nullptr;
  }
  double rate;
  Py_BEGIN_ALLOW_THREADS
  rate = lo::cpu::fp32_fma_peak(static_cast<int64_t>(iterations));
  Py_END_ALLOW_THREADS
  return PyFloat_FromDouble(rate);
}

PyMethodDef methods[] = {
    {"cpu_fp32_peak", cpu_fp32_peak, METH_O,
     "cpu_fp32_peak(iterations: int, /) -> float\n\n"
     "FP32 FLOP per second of this CPU, all OpenMP threads (omp_get_max_threads(), which\n"
     "torch.set_num_threads sets) at once: each thread runs independent, register-resident\n"
     "chains of multiply-adds on the SIMD path the fused kernels take (AVX-512, AVX2+FMA or\n"
     "baseline; LEARNEDOPT_CPU_CAPABILITY lowers it) for `iterations` steps, counted as 2 FLOP\n"
     "per lane per multiply-add, timed on a steady clock (the slowest thread). No memory\n"
     "traffic: the peak arithmetic rate, the compute ceiling of a roofline. Each step is 12 or\n"
     "16 vector FMAs per thread; choose iterations so that a call lasts milliseconds or more.\n"
     "Raises TypeError for a non-int and ValueError for iterations < 1."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }
