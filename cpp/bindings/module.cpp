// pybind11 bindings: check shapes, allocate outputs, release the GIL, call the engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <initializer_list>
#include <chrono>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <string>
#include <vector>

#include "dispatch.h"
#include "engine.h"
#include "nn.h"
#include "threading.h"

namespace py = pybind11;
using namespace rnnfast;

namespace {

// Inputs as the kernels read them: C-contiguous, of type T and aligned (pybind11 copies an
// array that is not; NumPy's C-contiguous flag allows a view at any byte offset, and a
// misaligned T* is undefined behaviour that vectorized code may trap on).
constexpr int kInputFlags =
    py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
template <typename T>
using Arr = py::array_t<T, kInputFlags>;

void check_shape(const py::array& a, std::initializer_list<long> want, const char* what) {
  bool ok = a.ndim() == (py::ssize_t)want.size();
  py::ssize_t i = 0;
  for (const long n : want) ok = ok && a.shape(i++) == n;
  if (!ok) {
    std::string w = "(";
    i = 0;
    for (const long n : want) w += (i++ ? ", " : "") + std::to_string(n);
    std::string g = "(";
    for (i = 0; i < a.ndim(); ++i) g += (i ? ", " : "") + std::to_string(a.shape(i));
    throw py::value_error(std::string(what) + " must have shape " + w + "), got " + g + ")");
  }
}

// o as an ndarray of exactly type_num (native byte order), aligned, with dimensions
// `shape`; else null.
const py::detail::PyArray_Proxy* typed_array(PyObject* o, int type_num,
                                             std::initializer_list<long> shape) {
  if (!py::detail::npy_api::get().PyArray_Check_(o)) return nullptr;
  const auto* a = py::detail::array_proxy(o);
  const auto* d = py::detail::array_descriptor_proxy(a->descr);
  const char swapped = __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ ? '<' : '>';
  if (d->type_num != type_num || d->byteorder == swapped ||
      !(a->flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || a->nd != (int)shape.size())
    return nullptr;
  int i = 0;
  for (const long n : shape)
    if (a->dimensions[i++] != n) return nullptr;
  return a;
}

// The data of o if it is a typed_array that is also C-contiguous; else null. The direct
// callables' test for inputs they can use as they are.
template <typename T>
const T* exact_data(PyObject* o, int type_num, std::initializer_list<long> shape) {
  const auto* a = typed_array(o, type_num, shape);
  if (!a || !(a->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return nullptr;
  return reinterpret_cast<const T*>(a->data);
}

// The same for an output: also writeable.
template <typename T>
T* exact_out(PyObject* o, int type_num, std::initializer_list<long> shape) {
  const auto* a = typed_array(o, type_num, shape);
  const int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                   py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a && (a->flags & need) == need ? reinterpret_cast<T*>(a->data) : nullptr;
}

// Whether the byte ranges [a, a + na) and [b, b + nb) do not overlap.
static inline bool bytes_apart(const void* a, long na, const void* b, long nb) {
  const char *pa = (const char*)a, *pb = (const char*)b;
  return pa + na <= pb || pb + nb <= pa;
}

// One step's input rows as they lie: o a typed_array (its first axis of length B, any
// other but the last of length 1) whose rows of I contiguous values start a whole number
// of rows apart (x[:, t] or x[:, t:t+1] of a batch-first (B, T, I) array); else null.
// *rows_apart: that number, in rows of I.
template <typename T>
const T* spaced_rows(PyObject* o, int type_num, std::initializer_list<long> shape,
                     long* rows_apart) {
  const auto* a = typed_array(o, type_num, shape);
  if (!a) return nullptr;
  const int nd = a->nd;
  const long row = (long)sizeof(T) * a->dimensions[nd - 1];
  if (a->dimensions[nd - 1] > 1 && a->strides[nd - 1] != (long)sizeof(T)) return nullptr;
  const long apart = a->strides[0];
  if (a->dimensions[0] == 1) {
    *rows_apart = 1;
  } else {
    if (row == 0 || apart <= 0 || apart % row) return nullptr;
    *rows_apart = apart / row;
  }
  return reinterpret_cast<const T*>(a->data);
}

// Runs f() -> PyObject*, turning C++ exceptions into Python ones.
template <class F>
PyObject* python_errors(F&& f) {
  try {
    return f();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// True if nothing but its one reference can reach o: refcount 1 and no weak references
// (views, memoryviews and buffer exports hold references).
inline bool unshared(PyObject* o) {
  if (Py_REFCNT(o) != 1) return false;
  const Py_ssize_t off = Py_TYPE(o)->tp_weaklistoffset;
  return off <= 0 || *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + off) == nullptr;
}

// The arrays a direct callable returned last, written again once the caller has let go of
// them (unshared, and still C-contiguous, writeable and of the shape wanted), so that a loop
// of steps allocates no arrays: `s.step(x)` drops each output before the next step, `y =
// s.step(x)` and `y, state = m(x, state)` hold the last call's. Arrays over kMaxBytes are
// not kept (a long sequence's output would stay alive). The GIL keeps the slots consistent;
// without one (free threading) every call gets new arrays.
struct Outputs {
  static constexpr int kSlots = 6;  // two calls of the LSTM call's y, h and c
  static constexpr long kMaxBytes = 1 << 20;
  PyObject* slot[kSlots] = {};
  int next = 0;
  ~Outputs() {
    for (PyObject* o : slot) Py_XDECREF(o);
  }
  template <typename T>
  py::array_t<T> get(int type_num, std::initializer_list<long> shape) {
    long bytes = sizeof(T);
    for (const long n : shape) bytes *= n;
#ifdef Py_GIL_DISABLED
    const bool keep = false;
#else
    const bool keep = bytes <= kMaxBytes;
#endif
    if (!keep) return py::array_t<T>(shape);
    for (PyObject* o : slot)
      if (o && unshared(o) && exact_out<T>(o, type_num, shape))
        return py::reinterpret_borrow<py::array_t<T>>(o);
    py::array_t<T> fresh(shape);
    Py_XDECREF(slot[next]);
    slot[next] = fresh.inc_ref().ptr();
    next = (next + 1) % kSlots;
    return fresh;
  }
};

// What a direct callable (a plain CPython function, no pybind11 dispatch) is bound to:
// its target, a reference that keeps the target alive, the dtype its inputs must have, and
// the outputs it returned (Outputs). The function's `self` is a capsule named after the
// payload type, which frees it.
template <class Target>
struct Direct {
  Target* target;
  PyObject* keep;
  int type_num;
  Outputs outputs;
  ~Direct() { Py_XDECREF(keep); }
  static Direct* from(PyObject* capsule) {
    return static_cast<Direct*>(PyCapsule_GetPointer(capsule, typeid(Direct).name()));
  }
};

template <class Target>
py::object make_direct(PyMethodDef* def, Target& target, py::object keep, int type_num) {
  auto* d = new Direct<Target>{&target, keep.release().ptr(), type_num};
  py::capsule cap(d, typeid(Direct<Target>).name(),
                  [](PyObject* c) { delete Direct<Target>::from(c); });
  PyObject* fn = PyCFunction_New(def, cap.ptr());
  if (!fn) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(fn);
}

// None, or the data of o as a C-contiguous array of T of this shape (converted if need be,
// kept alive by `keep`).
template <typename T>
const T* optional_state(const py::object& o, std::initializer_list<long> shape, const char* what,
                        py::object& keep) {
  if (o.is_none()) return nullptr;
  Arr<T> a = Arr<T>::ensure(o);
  if (!a) throw py::type_error(std::string(what) + " must be a float array");
  check_shape(a, shape, what);
  keep = a;
  return a.data();
}

// None, or one integer per batch row in [lo, hi] -> int32 values in `out` (null for None).
// Range-checked before narrowing (as double: exact for every value in range, and no integer
// type wraps), so 2**32 + 1 cannot become 1.
const int32_t* step_counts(const py::object& o, long batch, long lo, long hi, const char* what,
                           std::vector<int32_t>& out) {
  if (o.is_none()) return nullptr;
  py::array raw = py::array::ensure(o);
  if (!raw || (raw.dtype().kind() != 'i' && raw.dtype().kind() != 'u'))
    throw py::type_error(std::string(what) + " must be an integer array");
  Arr<double> v = Arr<double>::ensure(raw);
  check_shape(v, {batch}, what);
  out.resize(batch);
  for (long b = 0; b < batch; ++b) {
    const double x = v.data()[b];
    if (x < lo || x > hi)
      throw py::value_error(std::string(what) + " must lie in [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]");
    out[b] = (int32_t)x;
  }
  return out.data();
}

// RecurrentBase.__call__'s common case as a plain CPython callable,
// f(x, state, nthreads[, batch_first]): x an exact (T, B, I) ((B, T, I) when batch_first is
// True) or unbatched (T, I) array (as exact_data accepts), state None or
// exact arrays (L*D, B, H) / (L*D, H) (a tuple (h, c) for LSTM) -> (y, state) as the layer
// returns them. Any other call gets NotImplemented, and the Python path converts or raises.
// Saves the Python layer's checks and pybind11's dispatch on each streaming step
// `y, state = m(x_t, state)`.
template <typename T>
PyObject* direct_call(PyObject* cap, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* f = Direct<Engine<T>>::from(cap);
  if (!f) return nullptr;
  if (nargs < 3 || nargs > 4 || kwnames || !PyLong_CheckExact(args[2]))
    Py_RETURN_NOTIMPLEMENTED;
  Engine<T>& e = *f->target;
  const long I = e.input_size(), H = e.hidden_size(), DH = (long)e.directions() * H;
  const long LD = (long)e.num_layers() * e.directions();
  if (!py::detail::npy_api::get().PyArray_Check_(args[0])) Py_RETURN_NOTIMPLEMENTED;
  const auto* xa = py::detail::array_proxy(args[0]);
  const bool unbatched = xa->nd == 2;
  const int first = nargs == 4 ? PyObject_IsTrue(args[3]) : 0;  // the layer's batch_first
  if (first < 0) {
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
  }
  const bool batch_first = first && !unbatched;
  const long steps = xa->nd >= 2 ? xa->dimensions[batch_first ? 1 : 0] : 0;
  const long batch = unbatched ? 1 : xa->nd == 3 ? xa->dimensions[batch_first ? 0 : 1] : 0;
  if (steps < 1 || batch < 1) Py_RETURN_NOTIMPLEMENTED;
  const T* x = unbatched     ? exact_data<T>(args[0], f->type_num, {steps, I})
               : batch_first ? exact_data<T>(args[0], f->type_num, {batch, steps, I})
                             : exact_data<T>(args[0], f->type_num, {steps, batch, I});
  long rows_apart = 0;  // a batch-first step sliced from a longer sequence: read in place
  if (!x && batch_first && steps == 1)
    x = spaced_rows<T>(args[0], f->type_num, {batch, 1, I}, &rows_apart);
  auto state_part = [&](PyObject* o) {
    return unbatched ? exact_data<T>(o, f->type_num, {LD, H})
                     : exact_data<T>(o, f->type_num, {LD, batch, H});
  };
  const T *h0 = nullptr, *c0 = nullptr;
  PyObject* state = args[1];
  if (state != Py_None) {
    if (e.cell() == LSTM) {
      if (!PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != 2) Py_RETURN_NOTIMPLEMENTED;
      h0 = state_part(PyTuple_GET_ITEM(state, 0));
      c0 = state_part(PyTuple_GET_ITEM(state, 1));
      if (!c0) Py_RETURN_NOTIMPLEMENTED;
    } else {
      h0 = state_part(state);
    }
    if (!h0) Py_RETURN_NOTIMPLEMENTED;
  }
  const long nthreads = PyLong_AsLong(args[2]);
  if (!x || nthreads < 0 || nthreads > 4096) {
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
  }
  return python_errors([&] {
    auto out = [&](long rows, long cols) {
      return unbatched ? f->outputs.template get<T>(f->type_num, {rows, cols})
                       : f->outputs.template get<T>(f->type_num, {rows, batch, cols});
    };
    py::array_t<T> y = batch_first ? f->outputs.template get<T>(f->type_num, {batch, steps, DH})
                                   : out(steps, DH);
    py::array_t<T> hn = out(LD, H);
    py::object st = hn;
    T* cn = nullptr;
    if (e.cell() == LSTM) {  // (no empty array_t for other cells: that allocates one)
      py::array_t<T> c = out(LD, H);
      cn = c.mutable_data();
      st = py::make_tuple(hn, c);
    }
    {
      py::gil_scoped_release release;
      e.forward(x, (int)steps, (int)batch, h0, c0, nullptr, nullptr, false, 0.0, 0,
                (int)nthreads, y.mutable_data(), hn.mutable_data(), cn, batch_first, rows_apart);
    }
    return py::make_tuple(y, st).release().ptr();
  });
}

template <typename T>
py::object make_direct_call(py::object self) {
  static PyMethodDef def = {
      "direct_call",
      reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&direct_call<T>)),
      METH_FASTCALL | METH_KEYWORDS,
      "direct_call(x, state, nthreads[, batch_first]) -> (y, state), or NotImplemented."};
  return make_direct(&def, self.cast<Engine<T>&>(), self, py::dtype::of<T>().num());
}

template <typename T>
void bind_engine(py::module_& m, const char* name) {
  typedef Engine<T> E;
  py::class_<E>(m, name)
      .def(py::init<int, int, int, int, bool, bool>(), py::arg("cell"), py::arg("input_size"),
           py::arg("hidden_size"), py::arg("num_layers"), py::arg("bidirectional"),
           py::arg("bias"))
      .def_property_readonly("cell", &E::cell)
      .def_property_readonly("input_size", &E::input_size)
      .def_property_readonly("hidden_size", &E::hidden_size)
      .def_property_readonly("num_layers", &E::num_layers)
      .def_property_readonly("directions", &E::directions)
      .def("layout",
           [](const E& e) {
             py::list out;
             for (const ParamEntry& p : e.layout())
               out.append(py::make_tuple(p.name, p.offset, py::tuple(py::cast(p.shape))));
             return out;
           })
      .def_property_readonly("params",
                             [](py::object self) {
                               E& e = self.cast<E&>();
                               return py::array_t<T>({e.num_params()}, {sizeof(T)}, e.params(),
                                                     self);
                             })
      .def_property_readonly("grads",
                             [](py::object self) {
                               E& e = self.cast<E&>();
                               return py::array_t<T>({e.num_params()}, {sizeof(T)}, e.grads(),
                                                     self);
                             })
      .def("repack", &E::repack, py::call_guard<py::gil_scoped_release>())
      .def("zero_grad", &E::zero_grad, py::call_guard<py::gil_scoped_release>())
      .def(
          "assign_params",
          [](E& e, Arr<T> flat) {
            check_shape(flat, {e.num_params()}, "params");
            py::gil_scoped_release release;
            e.assign_params(flat.data());
          },
          py::arg("flat"))
      .def_property_readonly("has_cache", &E::has_cache)
      .def_property_readonly("direct_call", &make_direct_call<T>,
                             "The layer's plain call `y, state = m(x, state)` as a CPython "
                             "callable, for inputs usable as they are (else NotImplemented).")
      .def(
          "forward",
          [](E& e, Arr<T> x, py::object h0, py::object c0, py::object lengths, bool training,
             double dropout, uint64_t seed, int nthreads, py::object starts, bool batch_first) {
            if (x.ndim() != 3 || x.shape(2) != e.input_size())
              throw py::value_error(std::string("x must have shape ") +
                                    (batch_first ? "(B, T, " : "(T, B, ") +
                                    std::to_string(e.input_size()) + ")");
            const long steps = x.shape(batch_first ? 1 : 0), batch = x.shape(batch_first ? 0 : 1);
            const long H = e.hidden_size();
            const long LD = (long)e.num_layers() * e.directions();
            if (steps < 1 || batch < 1) throw py::value_error("x must have T >= 1 and B >= 1");
            if (!(dropout >= 0.0 && dropout < 1.0))
              throw py::value_error("dropout must be in [0, 1)");
            py::object h0a, c0a;  // (an empty Arr<T> would allocate an array)
            const T* h0p = optional_state<T>(h0, {LD, batch, H}, "h0", h0a);
            const T* c0p = nullptr;
            if (e.cell() == LSTM) c0p = optional_state<T>(c0, {LD, batch, H}, "c0", c0a);
            std::vector<int32_t> lens, firsts;
            const int32_t* lp = step_counts(lengths, batch, 1, steps, "lengths", lens);
            const int32_t* sp = step_counts(starts, batch, 0, steps - 1, "starts", firsts);
            if (sp && !lp) throw py::value_error("starts needs lengths");
            for (long b = 0; sp && b < batch; ++b)
              if (sp[b] + lp[b] > steps)
                throw py::value_error("starts + lengths must not exceed T");
            const long DH = (long)e.directions() * H;
            py::array_t<T> y = batch_first ? py::array_t<T>({batch, steps, DH})
                                           : py::array_t<T>({steps, batch, DH});
            py::array_t<T> hn({LD, batch, H});
            py::object cn_obj = py::none();
            T* cnp = nullptr;
            if (e.cell() == LSTM) {
              py::array_t<T> cn({LD, batch, H});
              cnp = cn.mutable_data();
              cn_obj = cn;
            }
            T* yp = y.mutable_data();
            T* hnp = hn.mutable_data();
            {
              py::gil_scoped_release release;
              e.forward(x.data(), (int)steps, (int)batch, h0p, c0p, lp, sp, training, dropout,
                        seed, nthreads, yp, hnp, cnp, batch_first);
            }
            return py::make_tuple(y, hn, cn_obj);
          },
          py::arg("x"), py::arg("h0") = py::none(), py::arg("c0") = py::none(),
          py::arg("lengths") = py::none(), py::arg("training") = false,
          py::arg("dropout") = 0.0, py::arg("seed") = 0, py::arg("nthreads") = 0,
          py::arg("starts") = py::none(), py::arg("batch_first") = false)
      .def(
          "backward",
          [](E& e, Arr<T> dy, py::object dhn, py::object dcn, int nthreads) {
            if (!e.has_cache())
              throw py::value_error("backward() needs a forward(..., training=True) first");
            const long steps = e.cache_steps(), batch = e.cache_batch(), H = e.hidden_size();
            const long LD = (long)e.num_layers() * e.directions();
            const bool bf = e.cache_batch_first();
            const long DH = (long)e.directions() * H, I = e.input_size();
            if (bf)
              check_shape(dy, {batch, steps, DH}, "dy");
            else
              check_shape(dy, {steps, batch, DH}, "dy");
            py::object dha, dca;
            const T* dhp = optional_state<T>(dhn, {LD, batch, H}, "dh_n", dha);
            const T* dcp = nullptr;
            if (e.cell() == LSTM) dcp = optional_state<T>(dcn, {LD, batch, H}, "dc_n", dca);
            py::array_t<T> dx =
                bf ? py::array_t<T>({batch, steps, I}) : py::array_t<T>({steps, batch, I});
            py::array_t<T> dh0({LD, batch, H});
            py::object dc0_obj = py::none();
            T* dc0p = nullptr;
            if (e.cell() == LSTM) {
              py::array_t<T> dc0({LD, batch, H});
              dc0p = dc0.mutable_data();
              dc0_obj = dc0;
            }
            T* dxp = dx.mutable_data();
            T* dh0p = dh0.mutable_data();
            {
              py::gil_scoped_release release;
              e.backward(dy.data(), dhp, dcp, nthreads, dxp, dh0p, dc0p);
            }
            return py::make_tuple(dx, dh0, dc0_obj);
          },
          py::arg("dy"), py::arg("dh_n") = py::none(), py::arg("dc_n") = py::none(),
          py::arg("nthreads") = 0);
}

template <typename T>
constexpr const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

// An array of exactly dtype T that is written in place, so no converted copy may stand in
// for it: TypeError for another type, ValueError unless C-contiguous, aligned and writeable.
template <typename T>
py::array_t<T> inplace_array(const py::object& o, const char* what) {
  if (!py::isinstance<py::array_t<T>>(o))
    throw py::type_error(std::string(what) + " must be a " + dtype_name<T>() + " array");
  auto a = py::reinterpret_borrow<py::array_t<T>>(o);
  if (!(a.flags() & py::array::c_style) || !a.writeable() ||
      !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(what) + " must be C-contiguous, aligned and writeable");
  return a;
}

template <typename T>
py::object state_view(py::object self, Stream<T>& s, T* data) {
  if (!data) return py::none();
  const Engine<T>& e = s.engine();
  return py::array_t<T>({(long)e.num_layers() * e.directions(), (long)s.batch(),
                         (long)e.hidden_size()}, data, self);
}

// The output of one step of s: (D*H,) for an unbatched row, else (B, D*H); one of
// `reuse`'s arrays where it has one free.
template <typename T>
py::array_t<T> step_output(const Stream<T>& s, bool row, Outputs* reuse = nullptr) {
  const long DH = (long)s.engine().directions() * s.engine().hidden_size();
  constexpr int type_num = py::detail::npy_format_descriptor<T>::value;
  if (reuse)
    return row ? reuse->get<T>(type_num, {DH}) : reuse->get<T>(type_num, {(long)s.batch(), DH});
  return row ? py::array_t<T>(DH) : py::array_t<T>({(long)s.batch(), DH});
}

// x -> y, the state one step on, with the GIL released.
template <typename T>
void step_released(Stream<T>& s, const T* x, T* y, long x_rows_apart = 0) {
  py::gil_scoped_release release;
  s.step(x, y, x_rows_apart);
}

// Stream.step as a plain CPython callable (vectorcall, no pybind11 dispatch): an x that
// is already an aligned, native array of the stream's dtype and shape, C-contiguous or
// rows a whole number of rows apart (spaced_rows), with no out or an out of the same kind
// (C-contiguous, writeable, apart from x), runs straight away; every other call goes to
// the checked `step` method, which converts, copies or raises. Saves the dispatcher's
// overhead on each batch-1 step (H = 8, one thread: step(x, out=y) took 1.49 us against
// step(x)'s 0.59 through the dispatcher; direct, 0.40 and 0.40 in another process).
template <typename T>
PyObject* direct_step(PyObject* cap, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* f = Direct<Stream<T>>::from(cap);
  if (!f) return nullptr;
  // step(x), step(x, out) or step(x, out=out)
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  const bool out_kw = nargs == 1 && nkw == 1 &&
                      PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "out") == 0;
  if ((nargs == 1 || nargs == 2) && (nkw == 0 || out_kw)) {
    PyObject* out = nargs == 2 || out_kw ? args[1] : nullptr;
    if (out == Py_None) out = nullptr;
    Stream<T>& s = *f->target;
    const long B = s.batch(), I = s.engine().input_size();
    const long DH = (long)s.engine().directions() * s.engine().hidden_size();
    const T* x = B == 1 ? exact_data<T>(args[0], f->type_num, {I}) : nullptr;
    const bool row = x != nullptr;  // (I,) -> (D*H,)
    long rows_apart = 0;  // x[:, t] of a batch-first (B, T, I) array: read in place
    if (!x) x = exact_data<T>(args[0], f->type_num, {B, I});
    if (!x) x = spaced_rows<T>(args[0], f->type_num, {B, I}, &rows_apart);
    // An out the kernels write as it is (exact, writeable, not over x); others go to `step`.
    T* y = nullptr;
    if (x && out) {
      y = row ? exact_out<T>(out, f->type_num, {DH}) : exact_out<T>(out, f->type_num, {B, DH});
      const long x_bytes = ((B - 1) * (rows_apart ? rows_apart : 1) + 1) * I * (long)sizeof(T);
      if (y && !bytes_apart(x, x_bytes, y, B * DH * (long)sizeof(T))) y = nullptr;
    }
    if (x && (!out || y))
      return python_errors([&] {
        if (y) {
          step_released(s, x, y, rows_apart);
          Py_INCREF(out);
          return out;
        }
        py::array_t<T> fresh = step_output(s, row, &f->outputs);
        step_released(s, x, fresh.mutable_data(), rows_apart);
        return fresh.release().ptr();
      });
  }
  return PyObject_Vectorcall(f->keep, args, nargs, kwnames);  // the checked `step`
}

template <typename T>
py::object make_direct_step(py::object self) {
  static PyMethodDef def = {
      "step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&direct_step<T>)),
      METH_FASTCALL | METH_KEYWORDS,
      "step(x, out=None) -> y: one step of the stream (see Stream.step)."};
  // Bound to the checked `step` method: the fallback, and it keeps the Python stream alive.
  return make_direct(&def, self.cast<Stream<T>&>(), self.attr("step"), py::dtype::of<T>().num());
}

template <typename T>
void bind_stream(py::module_& m, const char* name) {
  typedef Stream<T> S;
  py::class_<S>(m, name)
      .def(py::init([](Engine<T>& e, int batch) {
             if (batch < 1) throw py::value_error("batch must be >= 1");
             return new S(e, batch);
           }),
           py::arg("engine"), py::arg("batch"), py::keep_alive<1, 2>())
      .def_property_readonly("batch", &S::batch)
      .def_property("num_threads", &S::num_threads,
                    [](S& s, int n) {
                      if (n < 0 || n > 4096)
                        throw py::value_error("num_threads must be in [0, 4096]");
                      s.set_num_threads(n);
                    })
      .def_property_readonly("h", [](py::object self) {
        S& s = self.cast<S&>();
        return state_view<T>(self, s, s.h());
      })
      .def_property_readonly("c", [](py::object self) {
        S& s = self.cast<S&>();
        return state_view<T>(self, s, s.c());
      })
      .def(
          "step",
          [](S& s, Arr<T> x, py::object out) -> py::object {
            const long B = s.batch(), I = s.engine().input_size();
            const long DH = (long)s.engine().directions() * s.engine().hidden_size();
            const bool row = x.ndim() == 1 && B == 1;  // (I,) -> (D*H,)
            if (row)
              check_shape(x, {I}, "x");
            else
              check_shape(x, {B, I}, "x");
            // out: any writeable array of the dtype and shape, as NumPy's out= takes; the
            // kernels write it in place where they can (exact_out, not over x: the step
            // reads x while it writes y), else it is filled through a copy.
            T* direct = nullptr;
            if (!out.is_none()) {
              if (!py::isinstance<py::array_t<T>>(out))
                throw py::type_error(std::string("out must be a ") + dtype_name<T>() + " array");
              auto o = py::reinterpret_borrow<py::array_t<T>>(out);
              if (!o.writeable()) throw py::value_error("out must be writeable");
              if (row)
                check_shape(o, {DH}, "out");
              else
                check_shape(o, {B, DH}, "out");
              constexpr int type_num = py::detail::npy_format_descriptor<T>::value;
              direct = row ? exact_out<T>(out.ptr(), type_num, {DH})
                           : exact_out<T>(out.ptr(), type_num, {B, DH});
              if (direct && !bytes_apart(x.data(), x.nbytes(), direct, o.nbytes()))
                direct = nullptr;
            }
            if (direct) {
              step_released(s, x.data(), direct);
              return out;
            }
            py::array_t<T> y = step_output(s, row);
            step_released(s, x.data(), y.mutable_data());
            if (out.is_none()) return std::move(y);
            out.attr("__setitem__")(py::ellipsis(), y);
            return out;
          },
          py::arg("x"), py::arg("out") = py::none())
      .def_property_readonly("direct_step", &make_direct_step<T>,
                             "`step` as a plain CPython callable (no pybind11 dispatch on "
                             "the fast path); the Python Stream's `step` is this.");
}

// A 1-D in-place array (n elements when n >= 0): the optimizer's buffers.
template <typename T>
T* flat_buffer(const py::object& o, const char* what, long n, bool optional, long* size = nullptr) {
  if (optional && o.is_none()) return nullptr;
  auto a = inplace_array<T>(o, what);
  if (a.ndim() != 1) throw py::value_error(std::string(what) + " must be 1-D");
  if (n >= 0 && a.shape(0) != n)
    throw py::value_error(std::string(what) + " must have " + std::to_string(n) + " elements, got " +
                          std::to_string(a.shape(0)));
  if (size) *size = a.shape(0);
  return a.mutable_data();
}

// An in-place array of any shape with n elements in all.
template <typename T>
T* inplace_buffer(const py::object& o, const char* what, long n) {
  auto a = inplace_array<T>(o, what);
  if ((long)a.size() != n)
    throw py::value_error(std::string(what) + " must have " + std::to_string(n) + " elements");
  return a.mutable_data();
}

// f(T{}) with T the float type of the array x (float64 or else float32).
template <class F>
auto by_dtype(const py::object& x, F&& f) {
  if (py::isinstance<py::array_t<double>>(x)) return f(double{});
  return f(float{});
}

template <typename T>
void optim_step_impl(const py::dict& h, const py::object& p, const py::object& g,
                     const py::object& s1, const py::object& s2, const py::object& s3, int nthreads) {
  OptimStep<T> a;
  a.algo = h["algo"].cast<int>();
  if (a.algo < OPT_SGD || a.algo > OPT_ADAGRAD) throw py::value_error("unknown optimizer");
  a.p = flat_buffer<T>(p, "params", -1, false, &a.n);
  a.g = flat_buffer<T>(g, "grads", a.n, false);
  const bool need1 = a.algo != OPT_SGD, need2 = a.algo == OPT_ADAM;
  a.s1 = flat_buffer<T>(s1, "state 1", a.n, !need1);
  a.s2 = flat_buffer<T>(s2, "state 2", a.n, !need2);
  a.s3 = flat_buffer<T>(s3, "state 3", a.n, true);
  a.step = h["step"].cast<long>();
  if (a.step < 1) throw py::value_error("step must be >= 1");
  a.lr = h["lr"].cast<double>();
  a.weight_decay = h["weight_decay"].cast<double>();
  a.momentum = h["momentum"].cast<double>();
  a.dampening = h["dampening"].cast<double>();
  a.beta1 = h["beta1"].cast<double>();
  a.beta2 = h["beta2"].cast<double>();
  a.eps = h["eps"].cast<double>();
  a.alpha = h["alpha"].cast<double>();
  a.lr_decay = h["lr_decay"].cast<double>();
  a.nesterov = h["nesterov"].cast<bool>();
  a.decoupled = h["decoupled"].cast<bool>();
  a.maximize = h["maximize"].cast<bool>();
  py::gil_scoped_release release;
  const ThreadBudget budget(nthreads);
  kernels<T>().optim_step(a, budget.threads());
}

// Feed-forward layers and losses (nn.h). Arrays arrive checked by the Python layer; the
// checks here keep a wrong call from reading out of bounds.
template <typename T>
py::array_t<T> nn_dense_forward(Arr<T> x, Arr<T> W, py::object b, int act, int nthreads) {
  if (x.ndim() != 2 || W.ndim() != 2 || x.shape(1) != W.shape(1))
    throw py::value_error("dense: x (N, in) and W (out, in) do not match");
  const long N = x.shape(0), in = x.shape(1), out = W.shape(0);
  py::object bh;
  const T* bp = optional_state<T>(b, {out}, "bias", bh);
  if (act < ACT_NONE || act > ACT_SIGMOID) throw py::value_error("unknown activation");
  py::array_t<T> y({N, out});
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    dense_forward<T>(x.data(), N, in, W.data(), out, bp, act, yp, nthreads);
  }
  return y;
}

template <typename T>
py::object nn_dense_backward(Arr<T> x, Arr<T> W, int act, Arr<T> y, Arr<T> dy, py::object dW,
                             py::object db, bool need_dx, int nthreads) {
  if (x.ndim() != 2 || W.ndim() != 2) throw py::value_error("dense: x and W must be 2-D");
  const long N = x.shape(0), in = x.shape(1), out = W.shape(0);
  check_shape(W, {out, in}, "W");
  check_shape(y, {N, out}, "y");
  check_shape(dy, {N, out}, "dy");
  T* dWp = inplace_buffer<T>(dW, "dW", out * in);
  T* dbp = flat_buffer<T>(db, "db", out, true);
  py::array_t<T> dz({N, out});
  py::object dx_obj = py::none();
  T* dxp = nullptr;
  if (need_dx) {
    py::array_t<T> dx({N, in});
    dxp = dx.mutable_data();
    dx_obj = dx;
  }
  T* dzp = dz.mutable_data();
  {
    py::gil_scoped_release release;
    dense_backward<T>(x.data(), N, in, W.data(), out, act, y.data(), dy.data(), dzp, dWp, dbp,
                      dxp, nthreads);
  }
  return dx_obj;
}

template <typename T>
py::array_t<T> nn_embedding_forward(Arr<int64_t> idx,
                                    Arr<T> W, int nthreads) {
  if (W.ndim() != 2) throw py::value_error("embedding weight must be 2-D");
  std::vector<py::ssize_t> shape(idx.shape(), idx.shape() + idx.ndim());
  shape.push_back(W.shape(1));
  py::array_t<T> out(shape);
  T* op = out.mutable_data();
  long bad;
  {
    py::gil_scoped_release release;
    bad = embedding_forward<T>(idx.data(), (long)idx.size(), W.data(), W.shape(0), W.shape(1), op,
                               nthreads);
  }
  if (bad >= 0)
    throw py::value_error("x holds index " + std::to_string(idx.data()[bad]) +
                          ", outside [0, " + std::to_string(W.shape(0)) + ") (num_embeddings)");
  return out;
}

template <typename T>
void nn_embedding_backward(Arr<int64_t> idx,
                           Arr<T> dout, py::object dW, int nthreads) {
  if (!py::isinstance<py::array>(dW) || py::reinterpret_borrow<py::array>(dW).ndim() != 2)
    throw py::value_error("dW must be a 2-D array");
  auto dWa = py::reinterpret_borrow<py::array>(dW);
  const long vocab = dWa.shape(0), dim = dWa.shape(1), n = (long)idx.size();
  if (dout.size() != n * dim) throw py::value_error("dout must have idx.size * dim elements");
  T* dWp = inplace_buffer<T>(dW, "dW", vocab * dim);
  for (long i = 0; i < n; ++i)
    if (idx.data()[i] < 0 || idx.data()[i] >= vocab) throw py::value_error("index out of range");
  py::gil_scoped_release release;
  embedding_backward<T>(idx.data(), n, dout.data(), dim, dWp, nthreads);
}

template <typename T>
py::tuple nn_dropout(Arr<T> x, double p, uint64_t seed, int nthreads) {
  if (!(p >= 0.0 && p < 1.0)) throw py::value_error("p must be in [0, 1)");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array_t<T> y(shape), mask(shape);
  T* yp = y.mutable_data();
  T* mp = mask.mutable_data();
  {
    py::gil_scoped_release release;
    dropout<T>(x.data(), yp, mp, (long)x.size(), p, seed, nthreads);
  }
  return py::make_tuple(y, mask);
}

template <typename T>
py::tuple nn_loss(int kind, Arr<T> z, py::object target, py::object weights, double scale,
                  bool want_grad, int nthreads) {
  if (z.ndim() != 2) throw py::value_error("logits must be 2-D (N, C)");
  const long N = z.shape(0), C = z.shape(1);
  if (kind < LOSS_SPARSE_XENT || kind > LOSS_MSE) throw py::value_error("unknown loss");
  typedef Arr<int64_t> Labels;
  py::object keep_target, wh;  // (empty array_t holders would allocate arrays)
  const int64_t* lp = nullptr;
  const T* tp = nullptr;
  if (kind == LOSS_SPARSE_XENT) {
    Labels labels = Labels::ensure(target);
    if (!labels) throw py::type_error("labels must be integers");
    check_shape(labels, {N}, "labels");
    lp = labels.data();
    for (long i = 0; i < N; ++i)
      if (lp[i] < 0 || lp[i] >= C)
        throw py::value_error("label " + std::to_string(lp[i]) + " outside [0, " +
                              std::to_string(C) + ")");
    keep_target = labels;
  } else {
    Arr<T> targets = Arr<T>::ensure(target);
    if (!targets) throw py::type_error("targets must be a float array");
    check_shape(targets, {N, C}, "targets");
    tp = targets.data();
    keep_target = targets;
  }
  const T* wp = optional_state<T>(weights, {N}, "weights", wh);
  py::object grad_obj = py::none();
  T* gp = nullptr;
  if (want_grad) {
    py::array_t<T> g({N, C});
    gp = g.mutable_data();
    grad_obj = g;
  }
  long correct = 0;
  double total;
  {
    py::gil_scoped_release release;
    total = loss<T>(kind, z.data(), N, C, lp, tp, wp, scale, gp, &correct, nthreads);
  }
  return py::make_tuple(total, grad_obj, correct);
}

template <typename T>
void bind_nn(py::module_& m, const char* suffix) {
  const std::string s(suffix);
  m.def(("dense_forward" + s).c_str(), &nn_dense_forward<T>, py::arg("x"), py::arg("W"),
        py::arg("b"), py::arg("act"), py::arg("nthreads") = 0);
  m.def(("dense_backward" + s).c_str(), &nn_dense_backward<T>, py::arg("x"), py::arg("W"),
        py::arg("act"), py::arg("y"), py::arg("dy"), py::arg("dW"), py::arg("db"),
        py::arg("need_dx"), py::arg("nthreads") = 0);
  m.def(("embedding_forward" + s).c_str(), &nn_embedding_forward<T>, py::arg("idx"),
        py::arg("W"), py::arg("nthreads") = 0);
  m.def(("embedding_backward" + s).c_str(), &nn_embedding_backward<T>, py::arg("idx"),
        py::arg("dout"), py::arg("dW"), py::arg("nthreads") = 0);
  m.def(("dropout" + s).c_str(), &nn_dropout<T>, py::arg("x"), py::arg("p"), py::arg("seed"),
        py::arg("nthreads") = 0);
  m.def(("loss" + s).c_str(), &nn_loss<T>, py::arg("kind"), py::arg("z"), py::arg("target"),
        py::arg("weights"), py::arg("scale"), py::arg("want_grad"), py::arg("nthreads") = 0);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnnfast C++ engine";
  m.attr("RNN_TANH") = (int)RNN_TANH;
  m.attr("RNN_RELU") = (int)RNN_RELU;
  m.attr("LSTM") = (int)LSTM;
  m.attr("GRU") = (int)GRU;
  bind_engine<float>(m, "EngineF32");
  bind_engine<double>(m, "EngineF64");
  bind_stream<float>(m, "StreamF32");
  bind_stream<double>(m, "StreamF64");
  bind_nn<float>(m, "_f32");
  bind_nn<double>(m, "_f64");
  m.def(
      "optim_step",
      [](py::dict h, py::object p, py::object g, py::object s1, py::object s2, py::object s3,
         int nthreads) {
        by_dtype(p, [&](auto t) {
          optim_step_impl<decltype(t)>(h, p, g, s1, s2, s3, nthreads);
        });
      },
      py::arg("hyper"), py::arg("params"), py::arg("grads"), py::arg("s1") = py::none(),
      py::arg("s2") = py::none(), py::arg("s3") = py::none(), py::arg("nthreads") = 0,
      "One optimizer update of a flat buffer in place (see cpp/optim.h).");
  m.def(
      "sum_squares",
      [](py::object x, int nthreads) {
        return by_dtype(x, [&](auto t) {
          typedef decltype(t) T;
          long n;
          const T* d = flat_buffer<T>(x, "x", -1, false, &n);
          py::gil_scoped_release release;
          return kernels<T>().sum_squares(d, n, ThreadBudget(nthreads).threads());
        });
      },
      py::arg("x"), py::arg("nthreads") = 0);
  m.def(
      "scale_clip",
      [](py::object x, double scale, double clip, int nthreads) {
        by_dtype(x, [&](auto t) {
          typedef decltype(t) T;
          long n;
          T* d = flat_buffer<T>(x, "x", -1, false, &n);
          py::gil_scoped_release release;
          kernels<T>().scale_clip(d, n, scale, clip, ThreadBudget(nthreads).threads());
        });
      },
      py::arg("x"), py::arg("scale"), py::arg("clip") = -1.0, py::arg("nthreads") = 0);
  m.def("set_num_threads", &set_max_threads, py::arg("n"));
  m.def("get_num_threads", &max_threads);
  m.def("in_forked_child", &in_forked_child);
  m.def("_team_threads", &team_threads, py::arg("nthreads"),
        py::call_guard<py::gil_scoped_release>(),
        "How many distinct threads ran a parallel region asked for nthreads (a test probe).");
  m.def("_calls_on_one_thread", &calls_on_one_thread,
        "Test probe: sequence calls run on one thread by their thread choice (counted from "
        "the first read of a gated probe).");
  m.def("_set_pool_cpus", &set_pool_cpus, py::arg("n"),
        "Test probe: teams may hold up to n threads (0: the usable CPUs); -> the previous.");
  m.def("_delay_workers", &delay_workers, py::arg("us"),
        "Test probe: pool workers wait `us` microseconds before taking a job (0: none).");
  m.def("_late_shares_run", &late_shares_run,
        "Test probe: members' shares run so far by their callers in place of late workers.");
  m.def("_steals", &steals,
        "Test probe: times so far a thread took tasks from another thread's share of a step.");
  m.def("_helps", &helps,
        "Test probe: times so far a thread helped another with its rows (split by rows).");
  m.def(
      "_splits", [] { return py::make_tuple(splits_toward_caller(), splits_away_from_caller()); },
      "Test probe: (toward, away) calls so far whose tasks a PanelSplit sized and whose caller "
      "ran more / fewer of them than an equal share.");
  m.def("_delay_steps", &delay_steps, py::arg("us"),
        "Test probe: thread 1 of a team waits `us` microseconds before each step of the rows "
        "it runs in a time loop split by rows, of its run of a batch-1 sequence, or of its "
        "share of a step's phase that threads steal from (0: none).");
  m.def("_set_far_prefetch", &set_far_prefetch, py::arg("on"),
        "Test probe: batch-1 steps on weights over 4 MiB prefetch them (True) or not; returns "
        "the previous setting.");
  m.def("_far_prefetch", &far_prefetch, "Whether _set_far_prefetch's prefetch is on.");
  m.def("_set_transposed_a_in_place", &set_transposed_a_in_place, py::arg("on"),
        "Test probe: the GEMM reads a transposed A whose columns lie an odd number of cache "
        "lines apart in place (True) or packs it; returns the previous setting.");
  m.def("_transposed_a_in_place", &transposed_a_in_place,
        "Whether _set_transposed_a_in_place's reading is on.");
  m.def("_set_row_sweep_bytes", &set_row_sweep_bytes, py::arg("bytes"),
        "Test probe: weights a step reads (bytes) up to which threads split a step's batch rows "
        "rather than its weights (0: three quarters of this CPU's L2); returns the previous "
        "value.");
  m.def("_row_sweep_bytes", [] { return row_sweep_bytes(); },
        "The limit _set_row_sweep_bytes sets.");
  m.def("_row_sweep_bytes_for", [](double rows) { return row_sweep_bytes(rows); },
        py::arg("rows"), "The limit for threads of `rows` batch rows each.");
  m.def("_row_sweeps", &row_sweeps,
        "Test probe: time loops so far (a layer and direction, forward or backward) whose "
        "threads split the batch rows rather than the weights, counted from the first read.");
  m.def("_l2_cache_bytes", &l2_cache_bytes, "One core's L2 as the OS reports it (0: unknown).");
  m.def("_l3_cache_bytes", &l3_cache_bytes, "cpu0's L3 as the OS reports it (0: unknown).");
  m.def("_set_huge_pages", &set_huge_pages, py::arg("on"),
        "Buffers of 2 MiB or more allocated from now on ask for huge pages (True, the default "
        "unless RNNFAST_HUGE_PAGES=0) or not; returns the previous setting.");
  m.def("_set_stream_cache", &set_stream_cache, py::arg("mode"),
        "Test switch: training's gate cache written past the caches by its size (-1), never "
        "(0) or always (1); returns the previous mode.");
  m.def("_huge_pages", &huge_pages, "Whether _set_huge_pages's request is on.");
  m.def("isa", &current_isa);
  m.def("supported_isas", &supported_isas);
  m.def("set_isa", &set_isa, py::arg("name"));
  m.def(
      "_gemm",
      [](Arr<float> a, Arr<float> b, int nthreads, bool trans_a, py::tuple gaps) {
        const int ka = trans_a ? 0 : 1;
        GemmGaps g{0, 0, 0, 0};
        if (gaps.size() == 4)
          g = {gaps[0].cast<int>(), gaps[1].cast<int>(), gaps[2].cast<int>(), gaps[3].cast<int>()};
        else if (gaps.size() != 0)
          throw py::value_error("gaps must be () or (m_at, m_skip, k_at, k_skip)");
        if (g.m_skip < 0 || g.k_skip < 0 || a.ndim() != 2 || b.ndim() != 2 ||
            a.shape(ka) - g.k_skip != b.shape(0) || a.shape(1 - ka) - g.m_skip < 0)
          throw py::value_error(trans_a ? "_gemm needs a (K + k_skip, M + m_skip) and b (K, N)"
                                        : "_gemm needs a (M + m_skip, K + k_skip) and b (K, N)");
        const long M = a.shape(1 - ka) - g.m_skip, K = b.shape(0), N = b.shape(1);
        const long lda = a.shape(1);
        py::array_t<float> c({M, N});
        float* cp = c.mutable_data();
        {
          py::gil_scoped_release release;
          const ThreadBudget budget(nthreads);
          kernels<float>().gemm_gapped((int)M, (int)N, (int)K, a.data(), trans_a ? 1 : lda,
                                       trans_a ? lda : 1, g, b.data(), N, 1, cp, N, false,
                                       budget.threads());
        }
        return c;
      },
      py::arg("a"), py::arg("b"), py::arg("nthreads") = 0, py::arg("trans_a") = false,
      py::arg("gaps") = py::tuple(),
      "a @ b (a.T @ b with trans_a, the weight gradients' form) with the engine's own "
      "float32 GEMM (for tests and benchmarks). gaps (m_at, m_skip, k_at, k_skip): the rows "
      "of a's product from m_at on lie m_skip further on, its K columns from k_at on "
      "k_skip further on (a holds the skipped ones too).");
  m.def(
      "_read_probe",
      [](Arr<float> buf, int reps, int nthreads) {
        const ThreadBudget budget(nthreads);
        if (reps < 1) throw py::value_error("reps must be >= 1");
        double seconds, sum;
        {
          py::gil_scoped_release release;
          const auto t0 = std::chrono::steady_clock::now();
          sum = kernels<float>().read_sum(buf.data(), (long)buf.size(), reps, budget.threads());
          seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        return py::make_tuple(seconds, sum);
      },
      py::arg("buf"), py::arg("reps"), py::arg("nthreads") = 0,
      "(seconds, sum) of reading buf `reps` times with the kernels' vector loads: the bench's "
      "read-bandwidth probe.");
  m.def(
      "_barrier_probe",
      [](int rounds, int nthreads) {
        if (rounds < 1) throw py::value_error("rounds must be >= 1");
        const ThreadBudget budget(nthreads);
        py::gil_scoped_release release;
        return barrier_seconds(budget.threads(), rounds);
      },
      py::arg("rounds"), py::arg("nthreads") = 0,
      "Seconds per barrier of the call's threads over `rounds` barriers (0.0 on one thread): "
      "the bench's probe of the hand-off between cores.");
  m.def(
      "_step_thread_choice",
      [](Arr<double> count_s, Arr<double> one_s, long cycle, bool watch) {
        if (count_s.ndim() != 1 || one_s.ndim() != 1 || count_s.size() != one_s.size())
          throw py::value_error("count_s and one_s must be 1-d arrays of one length");
        if (cycle < 64) throw py::value_error("cycle must be >= 64");
        py::array_t<signed char> out(count_s.size());
        step_thread_choice_trace(count_s.data(), one_s.data(), (long)count_s.size(),
                                 out.mutable_data(), cycle, watch);
        return out;
      },
      py::arg("count_s"), py::arg("one_s"), py::arg("cycle") = 256, py::arg("watch") = false,
      "Test probe: the choice a stream on more than one thread makes for each of n steps (0: "
      "its count, 1: one thread), where step i lasts count_s[i] seconds on its count and "
      "one_s[i] on one thread; cycle=1024, watch=True: a sequence call's choice.");
  m.def(
      "_panel_split",
      [](int n, Arr<double> lag, Arr<double> rate, int calls, std::optional<Arr<double>> skew) {
        if (lag.ndim() != 1 || rate.ndim() != 1 || lag.size() != rate.size() ||
            (skew && (skew->ndim() != 1 || skew->size() != lag.size())) || lag.size() < 1 ||
            lag.size() > PanelSplit::kMaxThreads)
          throw py::value_error("lag, rate and skew must be 1-d arrays of one length, 1 to " +
                                std::to_string(PanelSplit::kMaxThreads));
        if (n < 0 || calls < 0) throw py::value_error("n and calls must be >= 0");
        const int nt = (int)lag.size();
        py::array_t<int> first(nt + 1);
        panel_split_trace(n, nt, lag.data(), rate.data(), skew ? skew->data() : nullptr, calls,
                          first.mutable_data());
        return first;
      },
      py::arg("n"), py::arg("lag"), py::arg("rate"), py::arg("calls"),
      py::arg("skew") = py::none(),
      "Test probe: the runs of n tasks (member i's: [first[i], first[i+1])) a one-step call "
      "gives a team after `calls` calls whose member i began lag[i] after the call and took "
      "rate[i] per task, its clock skew[i] ahead of its caller's (default 0).");
  m.def(
      "_thread_budget_probe",
      [](int requested, double seconds) {
        py::gil_scoped_release release;
        const ThreadBudget budget(requested);
        std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
        return budget.threads();
      },
      py::arg("requested"), py::arg("seconds"),
      "Holds a call's thread budget for `seconds` and returns its size (for tests).");
  m.def(
      "_as_input", [](Arr<float> x) { return x; }, py::arg("x"),
      "x as the bindings receive a float32 input (for tests: converted, copied if need be).");
  m.def(
      "_activation",
      [](int kind, Arr<float> x) {
        if (kind < 0 || kind > 2) throw py::value_error("kind must be 0 (exp), 1 (sigmoid), 2 (tanh)");
        py::array_t<float> out(x.request().shape);
        std::copy(x.data(), x.data() + x.size(), out.mutable_data());
        kernels<float>().activation(kind, out.mutable_data(), (long)out.size());
        return out;
      },
      py::arg("kind"), py::arg("x"), "The float32 vector exp/sigmoid/tanh of the current ISA.");
}
