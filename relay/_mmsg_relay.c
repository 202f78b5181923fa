/* The relay's steady state on its own Python objects, for relay.datagram and relay.shell (Linux, batched back-end).
 *
 * forward_clients(clients, batch, socket_type, datagrams, start) -> index
 * forward_peers(allocation, batch, socket_type, destination_type, datagrams, start) -> index
 *     The steady-state relaying of a burst `recv` returned, on the same Python objects the Python code uses
 *     (relay.shell.TurnUDPListener.datagramReceived with Allocation.on_client_channel_data, and
 *     Allocation.on_peer_datagram for a peer with a channel): from `start` on, each datagram that is plainly
 *     forwardable is queued on the batched socket it goes out of and counted on its allocation as the Python code
 *     would; at the first that is not (STUN, a Send indication, an unknown source, channel or peer, no permission,
 *     a short length, anything of an unexpected type) it stops and returns that datagram's index, which the caller
 *     hands to the Python handler before calling again: the order of effects is the order of datagrams.
 *     len(datagrams) when all went (the fixed arguments first: relay.datagram binds them with functools.partial,
 *     so calling one costs no Python frame). Why C: a profile of a worker relaying ChannelData had a quarter of its CPU in
 *     the interpreter, most of it this path (a handler, two method calls, a dozen attribute look-ups per datagram).
 *
 * read(endpoint, failed) -> count         one burst from endpoint.fd (recvmmsg) handled as `handle` does
 * handle(endpoint, datagrams, failed) -> count
 *     DatagramSocket's burst: endpoint.forward(datagrams, index) relays what it can, endpoint.handler(data, addr)
 *     gets the datagram it stopped at, and so on to the end. An exception from either is handed to
 *     failed(endpoint, addr or None, exception) (which logs it) and loses only that datagram (a forward's: the
 *     rest of the burst, as which of it went is unknown); anything not an Exception goes up.
 * flush(batch, failed)
 *     relay.datagram._Batch.flush: each pending socket's queue sent in one `send`, its failures added to its
 *     write_errors; a socket closed meanwhile sends nothing; an exception from send (a bug upstream: not bytes)
 *     counts the whole queue and goes to failed(endpoint, count, exception).
 * Why C for these three: with datagrams arriving a few at a time (a worker at 20 k packets/s read 4 per reactor
 * event), each reactor event cost ~24 µs of Python in the multiplexer's passes, the reads and the sends.
 */
#include "_mmsg.h"

#include <string.h>

static PyObject *s_channels, *s_permissions, *s_relay, *s_multiplexer, *s_queue, *s_pending, *s_active,
    *s_packets_from_client, *s_bytes_from_client, *s_packets_to_client, *s_bytes_to_client, *s_channel_of_peer,
    *s_send, *s_pad, *s_endpoint, *s_addr, *s_fd, *s_family, *s_sock, *s_fileno, *s_handler, *s_forward,
    *s_write_errors;

/* obj.name += delta, as Python's `+=` on an attribute does it. 0, or -1 with an error set. */
static int add_to(PyObject *obj, PyObject *name, Py_ssize_t delta) {
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    PyObject *step = PyLong_FromSsize_t(delta);
    PyObject *sum = step ? PyNumber_InPlaceAdd(old, step) : NULL;
    Py_DECREF(old);
    Py_XDECREF(step);
    if (sum == NULL) return -1;
    int result = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return result;
}

/* The write queue of `endpoint` if it is a batched socket of `socket_type` inside an active batch: what its
 * write (DatagramSocket._queue) appends to. A new reference, or NULL: not such a socket (no error), or an error. */
static PyObject *batched_queue(PyObject *endpoint, PyObject *socket_type) {
    if ((PyObject *)Py_TYPE(endpoint) != socket_type) return NULL;
    PyObject *multiplexer = PyObject_GetAttr(endpoint, s_multiplexer);
    if (multiplexer == NULL) return NULL;
    int batched = multiplexer != Py_None;
    Py_DECREF(multiplexer);
    if (!batched) return NULL;
    PyObject *queue = PyObject_GetAttr(endpoint, s_queue);
    if (queue != NULL && !PyList_CheckExact(queue)) Py_CLEAR(queue);
    return queue;
}

/* DatagramSocket._queue(data, addr) inside an active batch: the first datagram puts the socket on the pending
 * list. Steals neither reference. 0, or -1 with an error set. */
static int enqueue(PyObject *queue, PyObject *endpoint, PyObject *pending, PyObject *data, PyObject *addr) {
    if (PyList_GET_SIZE(queue) == 0 && PyList_Append(pending, endpoint) < 0) return -1;
    PyObject *item = PyTuple_Pack(2, data, addr);
    if (item == NULL) return -1;
    int result = PyList_Append(queue, item);
    Py_DECREF(item);
    return result;
}

/* The batch's pending list if the batch is active (as DatagramSocket._queue checks): a new reference, or NULL
 * (not active, not a list: no error; or an error). */
static PyObject *active_pending(PyObject *batch) {
    PyObject *active = PyObject_GetAttr(batch, s_active);
    if (active == NULL) return NULL;
    int is_active = active == Py_True;
    Py_DECREF(active);
    if (!is_active) return NULL;
    PyObject *pending = PyObject_GetAttr(batch, s_pending);
    if (pending != NULL && !PyList_CheckExact(pending)) Py_CLEAR(pending);
    return pending;
}

/* datagrams[i] as (data, addr) borrowed, if it is a (bytes, tuple) pair as `recv` makes them. */
static int datagram_at(PyObject *datagrams, Py_ssize_t i, PyObject **data, PyObject **addr) {
    PyObject *item = PyList_GET_ITEM(datagrams, i);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    *data = PyTuple_GET_ITEM(item, 0);
    *addr = PyTuple_GET_ITEM(item, 1);
    return PyBytes_CheckExact(*data) && PyTuple_CheckExact(*addr) && PyTuple_GET_SIZE(*addr) >= 1;
}

/* A dict attribute of obj (a new reference), or NULL: no error if merely absent or not exactly a dict. */
static PyObject *dict_attr(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) PyErr_Clear();
        return NULL;
    }
    if (!PyDict_CheckExact(value)) Py_CLEAR(value);
    return value;
}

/* One client ChannelData, as datagramReceived + Allocation.on_client_channel_data relay it. 1 queued and counted,
 * 0 not plainly forwardable (Python's), -1 error. */
static int forward_client(PyObject *data, PyObject *addr, PyObject *clients, PyObject *pending,
                          PyObject *socket_type) {
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 4 || bytes[0] < 0x40 || bytes[0] > 0x7F) return 0;
    PyObject *allocation = PyDict_GetItemWithError(clients, addr);
    if (allocation == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(allocation);
    int result = 0;
    PyObject *number = NULL, *relay = NULL, *queue = NULL, *payload = NULL;
    PyObject *channels = dict_attr(allocation, s_channels);
    PyObject *permissions = channels ? dict_attr(allocation, s_permissions) : NULL;
    PyObject *peer = NULL;
    if (permissions == NULL) goto check;
    number = PyLong_FromLong(bytes[0] << 8 | bytes[1]);
    if (number == NULL) goto error;
    peer = PyDict_GetItemWithError(channels, number);  /* borrowed */
    if (peer == NULL) goto check;
    if (!PyTuple_CheckExact(peer) || PyTuple_GET_SIZE(peer) < 1) goto done;
    int permitted = PyDict_Contains(permissions, PyTuple_GET_ITEM(peer, 0));
    if (permitted < 0) goto error;
    if (!permitted) goto done;
    Py_ssize_t length = bytes[2] << 8 | bytes[3];
    if (4 + length > size) goto done;  /* dropped and counted by the Python code */
    relay = PyObject_GetAttr(allocation, s_relay);
    if (relay == NULL) goto error;
    queue = batched_queue(relay, socket_type);
    if (queue == NULL) goto check;
    Py_INCREF(peer);  /* the tuple append below may not run Python code, but keep it ours while we use it */
    payload = PyBytes_FromStringAndSize((const char *)bytes + 4, length);
    if (payload == NULL || enqueue(queue, relay, pending, payload, peer) < 0 ||
        add_to(allocation, s_packets_from_client, 1) < 0 || add_to(allocation, s_bytes_from_client, length) < 0) {
        Py_DECREF(peer);
        goto error;
    }
    Py_DECREF(peer);
    result = 1;
    goto done;
check:
    result = PyErr_Occurred() ? -1 : 0;
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(channels);
    Py_XDECREF(permissions);
    Py_XDECREF(number);
    Py_XDECREF(relay);
    Py_XDECREF(queue);
    Py_XDECREF(payload);
    Py_DECREF(allocation);
    return result;
}

PyObject *mmsg_forward_clients(PyObject *self, PyObject *args) {
    PyObject *datagrams, *clients, *batch, *socket_type;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!OOO!n", &PyDict_Type, &clients, &batch, &socket_type, &PyList_Type, &datagrams,
                          &start))
        return NULL;
    PyObject *pending = active_pending(batch);
    if (pending == NULL) return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(start);
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(datagrams); i++) {
        PyObject *data, *addr;
        if (!datagram_at(datagrams, i, &data, &addr)) break;
        int forwarded = forward_client(data, addr, clients, pending, socket_type);
        if (forwarded < 0) {
            Py_DECREF(pending);
            return NULL;
        }
        if (!forwarded) break;
    }
    Py_DECREF(pending);
    return PyLong_FromSsize_t(i);
}

/* One peer datagram, as Allocation.on_peer_datagram sends it to a client with a channel to that peer. 1 queued and
 * counted, 0 not plainly forwardable, -1 error. */
static int forward_peer(PyObject *data, PyObject *peer, PyObject *allocation, PyObject *permissions,
                        PyObject *channel_of_peer, int pad, PyObject *queue, PyObject *endpoint, PyObject *reply_to,
                        PyObject *pending) {
    int permitted = PyDict_Contains(permissions, PyTuple_GET_ITEM(peer, 0));
    if (permitted <= 0) return permitted;
    PyObject *number = PyDict_GetItemWithError(channel_of_peer, peer);
    if (number == NULL) return PyErr_Occurred() ? -1 : 0;
    long channel = PyLong_Check(number) ? PyLong_AsLong(number) : -1;
    if (channel < 0 || channel > 0xFFFF) return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (length > 0xFFFF) return 0;  /* encode_channel_data's struct.pack would raise: Python's to report */
    Py_ssize_t padding = pad && length % 4 ? 4 - length % 4 : 0;  /* RFC 5766 11.5, as encode_channel_data */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 + length + padding);
    if (out == NULL) return -1;
    unsigned char *bytes = (unsigned char *)PyBytes_AS_STRING(out);
    bytes[0] = (unsigned char)(channel >> 8);
    bytes[1] = (unsigned char)channel;
    bytes[2] = (unsigned char)(length >> 8);
    bytes[3] = (unsigned char)length;
    memcpy(bytes + 4, PyBytes_AS_STRING(data), (size_t)length);
    memset(bytes + 4 + length, 0, (size_t)padding);
    int result = enqueue(queue, endpoint, pending, out, reply_to);
    Py_DECREF(out);
    if (result < 0 || add_to(allocation, s_packets_to_client, 1) < 0 ||
        add_to(allocation, s_bytes_to_client, length) < 0)
        return -1;
    return 1;
}

PyObject *mmsg_forward_peers(PyObject *self, PyObject *args) {
    PyObject *datagrams, *allocation, *batch, *socket_type, *destination_type;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "OOOOO!n", &allocation, &batch, &socket_type, &destination_type, &PyList_Type,
                          &datagrams, &start))
        return NULL;
    Py_ssize_t i = start < 0 ? 0 : start;
    int failed = 0;  /* an error while forwarding one (not merely unexpected objects up front): raised */
    PyObject *pending = NULL, *send = NULL, *endpoint = NULL, *reply_to = NULL, *queue = NULL, *pad = NULL;
    PyObject *permissions = dict_attr(allocation, s_permissions);
    PyObject *channel_of_peer = permissions ? dict_attr(allocation, s_channel_of_peer) : NULL;
    if (channel_of_peer == NULL) goto done;
    /* The allocation's `send` must be a Destination (a UDP client through a batched listener), else Python. */
    send = PyObject_GetAttr(allocation, s_send);
    if (send == NULL || (PyObject *)Py_TYPE(send) != destination_type) goto done;
    endpoint = PyObject_GetAttr(send, s_endpoint);
    reply_to = endpoint ? PyObject_GetAttr(send, s_addr) : NULL;
    queue = reply_to ? batched_queue(endpoint, socket_type) : NULL;
    pad = queue ? PyObject_GetAttr(allocation, s_pad) : NULL;
    pending = pad ? active_pending(batch) : NULL;
    if (pending == NULL) goto done;
    int padded = PyObject_IsTrue(pad);
    if (padded < 0) goto done;
    for (; i < PyList_GET_SIZE(datagrams); i++) {
        PyObject *data, *peer;
        if (!datagram_at(datagrams, i, &data, &peer)) break;
        int forwarded = forward_peer(data, peer, allocation, permissions, channel_of_peer, padded, queue, endpoint,
                                     reply_to, pending);
        if (forwarded < 0) failed = 1;
        if (forwarded <= 0) break;
    }
done:
    Py_XDECREF(permissions);
    Py_XDECREF(channel_of_peer);
    Py_XDECREF(pending);
    Py_XDECREF(send);
    Py_XDECREF(endpoint);
    Py_XDECREF(reply_to);
    Py_XDECREF(queue);
    Py_XDECREF(pad);
    if (PyErr_Occurred()) {
        if (failed || !PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
        PyErr_Clear();  /* not the objects this expects: every datagram from here is Python's */
    }
    return PyLong_FromSsize_t(i);
}


/* --- the burst and the batch (DatagramSocket.handle_burst, _read_burst and _Batch.flush) --- */

/* Hand the current exception to failed(endpoint, what, exception): 0, or -1 (an error from `failed`, or an
 * exception that is not an Exception, such as KeyboardInterrupt, left to go up). */
static int report(PyObject *failed, PyObject *endpoint, PyObject *what) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exception = PyErr_GetRaisedException();
#else
    PyObject *type, *exception, *traceback;
    PyErr_Fetch(&type, &exception, &traceback);
    PyErr_NormalizeException(&type, &exception, &traceback);
    if (traceback != NULL) PyException_SetTraceback(exception, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
#endif
    PyObject *result = PyObject_CallFunctionObjArgs(failed, endpoint, what, exception, NULL);
    Py_DECREF(exception);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

static Py_ssize_t handle(PyObject *endpoint, PyObject *datagrams, PyObject *failed) {
    PyObject *handler = PyObject_GetAttr(endpoint, s_handler);
    PyObject *forward = handler ? PyObject_GetAttr(endpoint, s_forward) : NULL;
    Py_ssize_t count = PyList_GET_SIZE(datagrams), index = 0, result = count;
    if (forward == NULL) goto error;
    while (index < count) {
        if (forward != Py_None) {
            PyObject *start = PyLong_FromSsize_t(index);
            PyObject *stop = start ? PyObject_CallFunctionObjArgs(forward, datagrams, start, NULL) : NULL;
            Py_XDECREF(start);
            if (stop == NULL) {  /* which of the rest went is unknown: it is dropped, not handled twice */
                if (report(failed, endpoint, Py_None) < 0) goto error;
                break;
            }
            index = PyLong_AsSsize_t(stop);
            Py_DECREF(stop);
            if (index < 0) goto error;  /* forward returns an index; anything else is a bug here */
            if (index >= count) break;
        }
        PyObject *item = PyList_GET_ITEM(datagrams, index);
        index++;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "datagrams must be (data, address) tuples");
            goto error;
        }
        PyObject *done = PyObject_CallFunctionObjArgs(handler, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                                                      NULL);
        if (done == NULL) {
            Py_INCREF(item);  /* `failed` may run anything; the address must outlive the call */
            int reported = report(failed, endpoint, PyTuple_GET_ITEM(item, 1));
            Py_DECREF(item);
            if (reported < 0) goto error;
        } else {
            Py_DECREF(done);
        }
    }
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(handler);
    Py_XDECREF(forward);
    return result;
}

PyObject *mmsg_handle(PyObject *self, PyObject *args) {
    PyObject *endpoint, *datagrams, *failed;
    if (!PyArg_ParseTuple(args, "OO!O", &endpoint, &PyList_Type, &datagrams, &failed)) return NULL;
    Py_INCREF(datagrams);  /* a handler could drop the caller's last reference */
    Py_ssize_t count = handle(endpoint, datagrams, failed);
    Py_DECREF(datagrams);
    return count < 0 ? NULL : PyLong_FromSsize_t(count);
}

PyObject *mmsg_read(PyObject *self, PyObject *args) {
    PyObject *endpoint, *failed;
    if (!PyArg_ParseTuple(args, "OO", &endpoint, &failed)) return NULL;
    PyObject *number = PyObject_GetAttr(endpoint, s_fd);
    if (number == NULL) return NULL;
    int fd = (int)PyLong_AsLong(number);
    Py_DECREF(number);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    PyObject *datagrams = mmsg_receive(fd, MAX_BATCH);
    if (datagrams == NULL && PyErr_ExceptionMatches(PyExc_ConnectionRefusedError)) {
        PyErr_Clear();  /* an ICMP port-unreachable for something we sent earlier: read on */
        datagrams = mmsg_receive(fd, MAX_BATCH);
    }
    if (datagrams == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError)) return NULL;
        PyErr_Clear();  /* the socket is gone or in error: nothing read */
        return PyLong_FromLong(0);
    }
    Py_ssize_t count = handle(endpoint, datagrams, failed);
    Py_DECREF(datagrams);
    return count < 0 ? NULL : PyLong_FromSsize_t(count);
}

/* One pending socket's queue sent: 0, or -1 with an error set (only from `failed` or the objects' shape). */
static int flush_one(PyObject *endpoint, PyObject *failed) {
    PyObject *queue = PyObject_GetAttr(endpoint, s_queue);
    PyObject *fresh = queue ? PyList_New(0) : NULL;
    int result = -1;
    if (fresh == NULL || PyObject_SetAttr(endpoint, s_queue, fresh) < 0) goto done;
    PyObject *sock = PyObject_GetAttr(endpoint, s_sock);
    PyObject *fileno = sock ? PyObject_CallMethodNoArgs(sock, s_fileno) : NULL;
    Py_XDECREF(sock);
    long open = fileno ? PyLong_AsLong(fileno) : -1;
    Py_XDECREF(fileno);
    if (PyErr_Occurred()) goto done;
    if (open < 0) {  /* closed while its datagrams were queued: they go nowhere, as with a closed socket */
        result = 0;
        goto done;
    }
    PyObject *fd = PyObject_GetAttr(endpoint, s_fd);
    PyObject *family = fd ? PyObject_GetAttr(endpoint, s_family) : NULL;
    long fd_value = fd ? PyLong_AsLong(fd) : -1, family_value = family ? PyLong_AsLong(family) : -1;
    Py_XDECREF(fd);
    Py_XDECREF(family);
    if (PyErr_Occurred()) goto done;
    Py_ssize_t errors = PyList_Check(queue) ? mmsg_send_items((int)fd_value, (int)family_value, queue) : -1;
    if (errors < 0) {  /* a bug upstream (not bytes, a port out of range): never out into the reactor */
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a socket's queue must be a list");
        errors = PyObject_Length(queue);
        if (errors < 0) goto done;
        PyObject *count = PyLong_FromSsize_t(errors);
        if (count == NULL) goto done;
        int reported = report(failed, endpoint, count);
        Py_DECREF(count);
        if (reported < 0) goto done;
    }
    result = errors ? add_to(endpoint, s_write_errors, errors) : 0;
done:
    Py_XDECREF(queue);
    Py_XDECREF(fresh);
    return result;
}

PyObject *mmsg_flush(PyObject *self, PyObject *args) {
    PyObject *batch, *failed;
    if (!PyArg_ParseTuple(args, "OO", &batch, &failed)) return NULL;
    PyObject *pending = PyObject_GetAttr(batch, s_pending);
    if (pending == NULL) return NULL;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL || PyObject_SetAttr(batch, s_pending, fresh) < 0 || !PyList_Check(pending)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "the batch's pending must be a list");
        Py_XDECREF(fresh);
        Py_DECREF(pending);
        return NULL;
    }
    Py_DECREF(fresh);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
        if (flush_one(PyList_GET_ITEM(pending, i), failed) < 0) {
            Py_DECREF(pending);
            return NULL;
        }
    }
    Py_DECREF(pending);
    Py_RETURN_NONE;
}

int mmsg_relay_init(void) {
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_channels, "channels"}, {&s_permissions, "permissions"}, {&s_relay, "relay"},
        {&s_multiplexer, "multiplexer"}, {&s_queue, "queue"}, {&s_pending, "pending"}, {&s_active, "active"},
        {&s_packets_from_client, "packets_from_client"}, {&s_bytes_from_client, "bytes_from_client"},
        {&s_packets_to_client, "packets_to_client"}, {&s_bytes_to_client, "bytes_to_client"},
        {&s_channel_of_peer, "channel_of_peer"}, {&s_send, "send"}, {&s_pad, "pad"}, {&s_endpoint, "endpoint"},
        {&s_addr, "addr"}, {&s_fd, "fd"}, {&s_family, "family"}, {&s_sock, "sock"}, {&s_fileno, "fileno"},
        {&s_handler, "handler"}, {&s_forward, "forward"}, {&s_write_errors, "write_errors"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return -1;
    }
    return 0;
}
