/* The router's two byte scans of the common case, compiled: `scan_request` and
 * `simple_response`, exactly what `laneway/router/scan.py`'s `py_scan_request` and
 * `py_simple_response` return for the same bytes (the Python ones are the reference, and the
 * fallback where this is not built; `tests/protocol/test_scan.py` compares the two).
 *
 * Why C here and nowhere else: these two functions are pure (bytes in, a tuple or None out),
 * run once per exchange each, and written with regular expressions they were about 5 us of
 * the router's ~12 us of Python per exchange. Everything that holds state (connections,
 * exchanges, the pool, hop records) stays in Python.
 *
 * Both walk the head once, line by line. A head qualifies only if every line matches the
 * grammar the Python patterns state (see scan.py), so a line is found by its first CR, which
 * must be followed by LF: values may not contain CR. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* `via` added to a forwarded request, then the empty line that ends its head */
static const char VIA_END[] = "via: 1.1 laneway\r\n\r\n";
#define VIA_END_LEN ((Py_ssize_t)(sizeof(VIA_END) - 1))
#define MAX_FIELDS 100

/* token characters (RFC 9110 tchar), field value characters (HTAB, SP, VCHAR, obs-text) and
 * request-target characters (visible ASCII). */
static unsigned char is_tchar[256];
static unsigned char is_vchar[256];

static void init_tables(void) {
    const char *extra = "!#$%&'*+.^_`|~-";
    for (int c = '0'; c <= '9'; c++) is_tchar[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) is_tchar[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) is_tchar[c] = 1;
    for (const char *p = extra; *p; p++) is_tchar[(unsigned char)*p] = 1;
    is_vchar['\t'] = 1;
    for (int c = 0x20; c <= 0x7e; c++) is_vchar[c] = 1;
    for (int c = 0x80; c <= 0xff; c++) is_vchar[c] = 1;
}

/* The index of the first "\r\n\r\n" in s[0:n], or -1. */
static Py_ssize_t find_end(const char *s, Py_ssize_t n) {
    if (n < 4) return -1;
    const char *p = s;
    const char *last = s + n - 4;
    while (p <= last) {
        p = memchr(p, '\r', (size_t)(last - p + 1));
        if (p == NULL) return -1;
        if (p[1] == '\n' && p[2] == '\r' && p[3] == '\n') return p - s;
        p++;
    }
    return -1;
}

/* Whether the field name s[0:n] is `lower` (lowercase ASCII), ignoring ASCII case. */
static int name_is(const char *s, Py_ssize_t n, const char *lower, Py_ssize_t len) {
    if (n != len) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}
#define NAME_IS(s, n, lit) name_is((s), (n), lit, (Py_ssize_t)(sizeof(lit) - 1))

/* One field line from s[pos] up to its CR. Fills the name and the value (OWS trimmed both
 * sides) and returns the index just after its CRLF, or -1 when the line is not
 * `token ":" value CRLF`. */
typedef struct {
    const char *name;
    Py_ssize_t name_len;
    const char *value;
    Py_ssize_t value_len;
} field;

static Py_ssize_t field_line(const char *s, Py_ssize_t pos, Py_ssize_t limit, field *f) {
    Py_ssize_t i = pos;
    while (i < limit && is_tchar[(unsigned char)s[i]]) i++;
    if (i == pos || i >= limit || s[i] != ':') return -1;
    f->name = s + pos;
    f->name_len = i - pos;
    i++;
    Py_ssize_t start = i;
    while (i < limit && is_vchar[(unsigned char)s[i]]) i++;
    if (i + 2 > limit || s[i] != '\r' || s[i + 1] != '\n') return -1;
    Py_ssize_t stop = i;
    while (start < stop && (s[start] == ' ' || s[start] == '\t')) start++;
    while (stop > start && (s[stop - 1] == ' ' || s[stop - 1] == '\t')) stop--;
    f->value = s + start;
    f->value_len = stop - start;
    return i + 2;
}

/* A Content-Length value: digits only, 1 to 15 of them; -1 otherwise. */
static long long content_length(const char *s, Py_ssize_t n) {
    if (n < 1 || n > 15) return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int is_keep_alive(const char *s, Py_ssize_t n) { return NAME_IS(s, n, "keep-alive"); }

/* The hop-by-hop fields that make a head not plain (RFC 9110 §7.6.1 and the ones llhttp or
 * the router act on), but `Connection: keep-alive` and `Keep-Alive`, which are dropped. */
static int hop_by_hop(const field *f) {
    const char *n = f->name;
    Py_ssize_t k = f->name_len;
    return NAME_IS(n, k, "proxy-connection") || NAME_IS(n, k, "te")
        || NAME_IS(n, k, "transfer-encoding") || NAME_IS(n, k, "upgrade")
        || NAME_IS(n, k, "trailer") || NAME_IS(n, k, "http2-settings");
}

/* Copies s[0:n] without the lines named in `drop` (line starts, each up to and with its CRLF),
 * then each of `parts` (`nparts` of them, `lens` long), into a new bytes. */
static PyObject *join_head(const char *s, Py_ssize_t n, const Py_ssize_t *drop, int dropped,
                           const char *const *parts, const Py_ssize_t *lens, int nparts) {
    Py_ssize_t size = n;
    Py_ssize_t ends[MAX_FIELDS];
    for (int d = 0; d < dropped; d++) {
        const char *cr = memchr(s + drop[d], '\r', (size_t)(n - drop[d]));
        ends[d] = (cr - s) + 2;
        size -= ends[d] - drop[d];
    }
    for (int p = 0; p < nparts; p++) size += lens[p];
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t at = 0;
    for (int d = 0; d < dropped; d++) {
        memcpy(o, s + at, (size_t)(drop[d] - at));
        o += drop[d] - at;
        at = ends[d];
    }
    memcpy(o, s + at, (size_t)(n - at));
    o += n - at;
    for (int p = 0; p < nparts; p++) {
        if (lens[p]) memcpy(o, parts[p], (size_t)lens[p]);
        o += lens[p];
    }
    return out;
}

static int check_args(PyObject *const *args, Py_ssize_t nargs, const char *fname,
                      Py_ssize_t want, Py_ssize_t *limit) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fname, want,
                     nargs);
        return -1;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() argument 1 must be bytes", fname);
        return -1;
    }
    *limit = PyLong_AsSsize_t(args[1]);
    if (*limit == -1 && PyErr_Occurred()) return -1;
    return 0;
}

static const struct { const char *name; Py_ssize_t len; } METHODS[] = {
    {"GET", 3}, {"HEAD", 4}, {"POST", 4}, {"PUT", 3}, {"DELETE", 6}, {"PATCH", 5},
    {"OPTIONS", 7},
};
#define N_METHODS (sizeof(METHODS) / sizeof(METHODS[0]))
static PyObject *method_names[N_METHODS];  /* the same str for every request, made once */
#define MAX_PATH 512  /* what a hop record keeps of the target */

static PyObject *scan_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t limit;
    if (check_args(args, nargs, "scan_request", 2, &limit) < 0) return NULL;
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t end = find_end(s, n);
    if (end < 0 || end >= limit) Py_RETURN_NONE;
    Py_ssize_t head_end = end + 2;  /* the last field line's CRLF included */

    /* the request line: method SP "/" target SP "HTTP/1.1" CRLF */
    Py_ssize_t i = 0;
    while (i < head_end && s[i] != ' ') i++;
    PyObject *method = NULL;
    for (size_t m = 0; m < N_METHODS; m++) {
        if (METHODS[m].len == i && memcmp(s, METHODS[m].name, (size_t)i) == 0)
            method = method_names[m];
    }
    if (method == NULL) Py_RETURN_NONE;
    Py_ssize_t target_at = i + 1;
    if (target_at >= head_end || s[target_at] != '/') Py_RETURN_NONE;
    i = target_at + 1;
    while (i < head_end && s[i] >= '!' && s[i] <= '~') i++;
    Py_ssize_t target_len = i - target_at;
    if (i + 11 > head_end || memcmp(s + i, " HTTP/1.1\r\n", 11) != 0) Py_RETURN_NONE;
    i += 11;

    field f;
    int fields = 0, hosts = 0, origin = 0, bags = 0, dropped = 0;
    long long length = -1;
    const char *host = NULL, *traceparent = NULL, *tracestate = NULL;
    Py_ssize_t host_len = 0, traceparent_len = 0, tracestate_len = 0;
    Py_ssize_t bag_at[MAX_FIELDS], bag_len[MAX_FIELDS], drop[MAX_FIELDS];
    while (i < head_end) {
        if (fields == MAX_FIELDS) Py_RETURN_NONE;
        Py_ssize_t line = i;
        i = field_line(s, i, head_end, &f);
        if (i < 0) Py_RETURN_NONE;
        fields++;
        const char *nm = f.name;
        Py_ssize_t k = f.name_len;
        switch (nm[0] | 0x20) {  /* the first letter, lowered, picks what to compare */
        case 'h':
            if (NAME_IS(nm, k, "host")) {
                hosts++;
                host = f.value;
                host_len = f.value_len;
                continue;
            }
            break;
        case 'b':
            if (NAME_IS(nm, k, "baggage")) {
                bag_at[bags] = f.value - s;
                bag_len[bags++] = f.value_len;
                continue;
            }
            break;
        case 'c':
            if (NAME_IS(nm, k, "content-length")) {
                if (length >= 0) Py_RETURN_NONE;
                length = content_length(f.value, f.value_len);
                if (length < 0) Py_RETURN_NONE;
                continue;
            }
            if (NAME_IS(nm, k, "connection")) {
                if (!is_keep_alive(f.value, f.value_len)) Py_RETURN_NONE;
                drop[dropped++] = line;
                continue;
            }
            break;
        case 't':
            if (NAME_IS(nm, k, "traceparent")) {
                traceparent = f.value;
                traceparent_len = f.value_len;
                continue;
            }
            if (NAME_IS(nm, k, "tracestate")) {
                tracestate = f.value;
                tracestate_len = f.value_len;
                continue;
            }
            break;
        case 'o':
            if (NAME_IS(nm, k, "origin")) {
                origin = 1;
                continue;
            }
            break;
        case 'k':
            if (is_keep_alive(nm, k)) {
                drop[dropped++] = line;
                continue;
            }
            break;
        }
        if (hop_by_hop(&f)) Py_RETURN_NONE;
    }
    if (fields == 0) Py_RETURN_NONE;
    Py_ssize_t body = n - end - 4;
    if (hosts != 1 || body != (length > 0 ? length : 0)) Py_RETURN_NONE;

    PyObject *path = PyUnicode_DecodeASCII(s + target_at,
                                           target_len < MAX_PATH ? target_len : MAX_PATH, NULL);
    if (path == NULL) return NULL;
    PyObject *baggage = PyList_New(bags);
    if (baggage == NULL) {
        Py_DECREF(path);
        return NULL;
    }
    for (int b = 0; b < bags; b++) {
        PyObject *value = PyBytes_FromStringAndSize(s + bag_at[b], bag_len[b]);
        if (value == NULL) {
            Py_DECREF(baggage);
            Py_DECREF(path);
            return NULL;
        }
        PyList_SET_ITEM(baggage, b, value);
    }
    const char *parts[2] = {VIA_END, s + end + 4};
    Py_ssize_t lens[2] = {VIA_END_LEN, body};
    PyObject *forward = join_head(s, head_end, drop, dropped, parts, lens, 2);
    if (forward == NULL) {
        Py_DECREF(baggage);
        Py_DECREF(path);
        return NULL;
    }
    return Py_BuildValue(
        "(ONy#NLy#y#ON)", method, path, host, host_len, baggage, length, traceparent ? traceparent : "", traceparent_len,
        tracestate ? tracestate : "", tracestate_len, origin ? Py_True : Py_False, forward);
}

/* Whether s[0:n] is one whole simple response (see scan.py's py_simple_response); if so, its
 * status, `end` (the index of the first CRLFCRLF: the body starts at end + 4) and the lines to
 * drop (`Connection: keep-alive`, `Keep-Alive`). */
static int scan_response(const char *s, Py_ssize_t n, Py_ssize_t limit, int *status_out,
                         Py_ssize_t *end_out, Py_ssize_t *drop, int *dropped_out) {
    Py_ssize_t end = find_end(s, n);
    if (end < 0 || end + 4 > limit) return 0;
    Py_ssize_t head_end = end + 2;

    /* the status line: "HTTP/1.1" SP 2xx-5xx (not 204, 304) [SP reason] CRLF */
    if (head_end < 14 || memcmp(s, "HTTP/1.1 ", 9) != 0) return 0;
    const char *d = s + 9;
    if (d[0] < '2' || d[0] > '5' || d[1] < '0' || d[1] > '9' || d[2] < '0' || d[2] > '9')
        return 0;
    int status = (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
    if (status == 204 || status == 304) return 0;
    Py_ssize_t i = 12;
    if (s[i] == ' ') {
        i++;
        while (i < head_end && is_vchar[(unsigned char)s[i]]) i++;
    }
    if (i + 2 > head_end || s[i] != '\r' || s[i + 1] != '\n') return 0;
    i += 2;

    field f;
    int fields = 0, dropped = 0, lengths = 0;
    long long length = -1;
    while (i < head_end) {
        if (fields == MAX_FIELDS) return 0;
        Py_ssize_t line = i;
        i = field_line(s, i, head_end, &f);
        if (i < 0) return 0;
        fields++;
        const char *nm = f.name;
        Py_ssize_t k = f.name_len;
        if (NAME_IS(nm, k, "content-length")) {
            if (lengths++) return 0;  /* two of them: the parser's checks */
            length = content_length(f.value, f.value_len);
        } else if (is_keep_alive(nm, k)) {
            drop[dropped++] = line;
        } else if (NAME_IS(nm, k, "connection")) {
            if (!is_keep_alive(f.value, f.value_len)) return 0;
            drop[dropped++] = line;
        } else if (hop_by_hop(&f)) {
            return 0;
        }
    }
    if (fields == 0 || length < 0 || length != n - end - 4) return 0;
    *status_out = status;
    *end_out = end;
    *dropped_out = dropped;
    return 1;
}

static PyObject *simple_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t limit, end, drop[MAX_FIELDS];
    int status, dropped;
    if (check_args(args, nargs, "simple_response", 2, &limit) < 0) return NULL;
    const char *s = PyBytes_AS_STRING(args[0]);
    if (!scan_response(s, PyBytes_GET_SIZE(args[0]), limit, &status, &end, drop, &dropped))
        Py_RETURN_NONE;
    PyObject *head = join_head(s, end + 4, drop, dropped, NULL, NULL, 0);
    if (head == NULL) return NULL;
    return Py_BuildValue("(inN)", status, end + 4, head);
}

static const char SERVED_BY[] = "laneway-served-by: ";

static PyObject *simple_answer(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t limit, end, drop[MAX_FIELDS];
    int status, dropped;
    if (check_args(args, nargs, "simple_answer", 3, &limit) < 0) return NULL;
    if (!PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "simple_answer() argument 3 must be bytes");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (!scan_response(s, n, limit, &status, &end, drop, &dropped)) Py_RETURN_NONE;
    Py_ssize_t served = PyBytes_GET_SIZE(args[2]);
    const char *parts[5] = {SERVED_BY, PyBytes_AS_STRING(args[2]), "\r\n", VIA_END,
                            s + end + 4};
    Py_ssize_t lens[5] = {(Py_ssize_t)sizeof(SERVED_BY) - 1, served, 2, VIA_END_LEN,
                          n - end - 4};
    PyObject *out = served ? join_head(s, end + 2, drop, dropped, parts, lens, 5)
                           : join_head(s, end + 2, drop, dropped, parts + 3, lens + 3, 2);
    if (out == NULL) return NULL;
    return Py_BuildValue("(iN)", status, out);
}

/* The routing key of a `baggage` value in the common cases, as core/baggage.py's baggage_key
 * reads them: no `laneway-key` at all, or one member of it in an ASCII value without `%`.
 * Anything else (several, percent-encoded, non-ASCII) is None: "ask baggage_key". */
static const char KEY_NAME[] = "laneway-key";
#define KEY_NAME_LEN ((Py_ssize_t)(sizeof(KEY_NAME) - 1))

static PyObject *no_key;  /* (None, False), made once */

static PyObject *baggage_key(PyObject *module, PyObject *value) {
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "baggage_key() argument must be bytes");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    Py_ssize_t at = -1;
    for (Py_ssize_t i = 0; i + KEY_NAME_LEN <= n;) {
        const char *p = memchr(s + i, 'l', (size_t)(n - KEY_NAME_LEN + 1 - i));
        if (p == NULL) break;
        i = p - s;
        if (memcmp(p, KEY_NAME, KEY_NAME_LEN) == 0) {
            if (at >= 0) Py_RETURN_NONE;  /* several: baggage_key's reading of them */
            at = i;
            i += KEY_NAME_LEN;
        } else {
            i++;
        }
    }
    if (at < 0) return Py_NewRef(no_key);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80) Py_RETURN_NONE;  /* not ASCII */
    }
    /* `laneway-key` OWS `=`, at a member's start: only OWS between it and a comma (or the
     * value's start) */
    Py_ssize_t i = at + KEY_NAME_LEN;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    if (i >= n || s[i] != '=') return Py_NewRef(no_key);
    for (Py_ssize_t j = at - 1; j >= 0 && s[j] != ','; j--) {
        if (s[j] != ' ' && s[j] != '\t') return Py_NewRef(no_key);
    }
    Py_ssize_t start = i + 1, stop = start;
    while (stop < n && s[stop] != ',' && s[stop] != ';') stop++;
    if (memchr(s + start, '%', (size_t)(stop - start)) != NULL) Py_RETURN_NONE;
    while (start < stop && (s[start] == ' ' || s[start] == '\t' || s[start] == '+')) start++;
    while (stop > start && (s[stop - 1] == ' ' || s[stop - 1] == '\t' || s[stop - 1] == '+'))
        stop--;
    if (start == stop) return Py_NewRef(no_key);
    PyObject *key = PyUnicode_DecodeASCII(s + start, stop - start, NULL);
    if (key == NULL) return NULL;
    return Py_BuildValue("(NO)", key, Py_False);
}

/* A hop record (a tuple) the collector need not walk: untracked when none of its items is
 * tracked, as CPython itself untracks such tuples at their first collection. The router keeps
 * up to a batch of young records between flushes, which made every young collection walk
 * thousands of them (bench/RESULTS.md, issue 17). */
static PyObject *untrack(PyObject *module, PyObject *row) {
    if (PyTuple_CheckExact(row) && PyObject_GC_IsTracked(row)) {
        Py_ssize_t n = PyTuple_GET_SIZE(row);
        Py_ssize_t i = 0;
        while (i < n && !PyObject_GC_IsTracked(PyTuple_GET_ITEM(row, i))) i++;
        if (i == n) PyObject_GC_UnTrack(row);
    }
    return Py_NewRef(row);
}

static PyMethodDef methods[] = {
    {"untrack", (PyCFunction)untrack, METH_O,
     "untrack(row): the same tuple, untracked by the collector when its items are atomic."},
    {"baggage_key", (PyCFunction)baggage_key, METH_O,
     "baggage_key(value): core.baggage.baggage_key's answer in the common cases, else None."},
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "scan_request(data, max_header_bytes): as laneway.router.scan.py_scan_request."},
    {"simple_response", (PyCFunction)(void (*)(void))simple_response, METH_FASTCALL,
     "simple_response(data, max_header_bytes): as laneway.router.scan.py_simple_response."},
    {"simple_answer", (PyCFunction)(void (*)(void))simple_answer, METH_FASTCALL,
     "simple_answer(data, max_header_bytes, served_by): as scan.py_simple_answer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "laneway.router._scan",
    "The router's byte scans of the common case, compiled (see scan.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    init_tables();
    no_key = Py_BuildValue("(OO)", Py_None, Py_False);
    if (no_key == NULL) return NULL;
    for (size_t m = 0; m < N_METHODS; m++) {
        method_names[m] = PyUnicode_InternFromString(METHODS[m].name);
        if (method_names[m] == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
