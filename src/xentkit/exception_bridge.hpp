#pragma once
// Maps the C++ exceptions of xentkit onto Python exceptions. Called by Cython from inside a catch
// block (`except +xk_raise_py_error`), so `throw;` rethrows the exception being handled.

#include <Python.h>

#include <exception>
#include <new>
#include <stdexcept>

#include "xentkit/errors.hpp"

static PyObject* xk_label_error_type = nullptr;

static inline void xk_set_label_error_type(PyObject* type) {
  Py_XINCREF(type);
  Py_XDECREF(xk_label_error_type);
  xk_label_error_type = type;
}

static PyObject* xk_unavailable_error_type = nullptr;

static inline void xk_set_unavailable_error_type(PyObject* type) {
  Py_XINCREF(type);
  Py_XDECREF(xk_unavailable_error_type);
  xk_unavailable_error_type = type;
}

static inline void xk_raise_py_error() {
  try {
    throw;
  } catch (const xentkit::label_error& e) {
    PyObject* type = xk_label_error_type ? xk_label_error_type : PyExc_ValueError;
    PyObject* args = Py_BuildValue("(ssL)", e.what(), e.value_text().c_str(),
                                   static_cast<long long>(e.index()));
    if (args != nullptr) {
      PyErr_SetObject(type, args);
      Py_DECREF(args);
    }
  } catch (const xentkit::type_error& e) {
    PyErr_SetString(PyExc_TypeError, e.what());
  } catch (const xentkit::unavailable_error& e) {
    PyErr_SetString(xk_unavailable_error_type ? xk_unavailable_error_type : PyExc_RuntimeError,
                    e.what());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "xentkit: unknown C++ exception");
  }
}
