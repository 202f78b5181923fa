/* What relay/_mmsg.c (the system calls) and relay/_mmsg_relay.c (relaying on the relay's Python objects) share:
 * the two halves of one extension module, relay._mmsg. */
#ifndef RELAY_MMSG_H
#define RELAY_MMSG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_BATCH 64  /* datagrams per recvmmsg/sendmmsg (relay.datagram.READ_BURST) */

/* recvmmsg: a new list of up to `count` (bytes, (host, port)), [] when none; NULL with OSError set. */
PyObject *mmsg_receive(int fd, int count);
/* sendmmsg of a list of (data, (host, port)): how many were not sent; -1 with an error set (not bytes, ...). */
Py_ssize_t mmsg_send_items(int fd, int family, PyObject *items);

int mmsg_relay_init(void);
PyObject *mmsg_forward_clients(PyObject *self, PyObject *args);
PyObject *mmsg_forward_peers(PyObject *self, PyObject *args);
PyObject *mmsg_handle(PyObject *self, PyObject *args);
PyObject *mmsg_read(PyObject *self, PyObject *args);
PyObject *mmsg_flush(PyObject *self, PyObject *args);

#endif
