"""Sockets and TLS through the host, loaded as the module `_eryx_net`.

The sandbox has no sockets of its own. `install()` replaces
`socket.socket`, `socket.create_connection` and `socket.getaddrinfo` with
versions whose TCP connections the host makes (after checking its network
policy), and provides an `ssl` module whose `wrap_socket` asks the host to
start TLS on such a connection (the host verifies the certificate against
its own roots, always: `CERT_NONE` and `check_hostname = False` do not turn
verification off). `http.client`, `urllib.request` and socket-based clients
then work unchanged. Only client TCP is offered: no listening, no UDP.
"""

import errno
import io
import sys
import types

import _eryx_host as _host
import socket as _socket

_real_getaddrinfo = _socket.getaddrinfo
_GLOBAL_DEFAULT_TIMEOUT = _socket._GLOBAL_DEFAULT_TIMEOUT
# Largest piece handed to the host in one send (the host writes at most this
# per call anyway).
_MAX_SEND = 1 << 20


class NetworkPolicyError(PermissionError):
    """A connection the sandbox's network policy refused."""


def _error(text):
    """The Python exception for a host `kind: message` error."""
    kind, _, message = text.partition(": ")
    if kind == "policy":
        return NetworkPolicyError(errno.EACCES, f"eryx network policy: {message}")
    if kind == "dns":
        return _socket.gaierror(_socket.EAI_NONAME, message)
    if kind == "refused":
        return ConnectionRefusedError(errno.ECONNREFUSED, message)
    if kind == "timeout":
        return TimeoutError(errno.ETIMEDOUT, f"timed out: {message}")
    if kind == "tls":
        ssl = sys.modules.get("ssl")
        if ssl is not None and hasattr(ssl, "SSLCertVerificationError") and "certificate" in message.lower():
            return ssl.SSLCertVerificationError(1, message)
        if ssl is not None and hasattr(ssl, "SSLError"):
            return ssl.SSLError(1, message)
        return OSError(errno.EIO, message)
    if kind == "closed":
        return OSError(errno.EBADF, message)
    if kind == "limit":
        return OSError(errno.EFBIG, f"eryx network limit: {message}")
    return OSError(errno.EIO, message)


def _check(result):
    ok, value = result
    if not ok:
        raise _error(value)
    return value


class _SocketIO(io.RawIOBase):
    """The raw stream under `HostSocket.makefile`."""

    def __init__(self, sock, mode):
        super().__init__()
        self._sock = sock
        self._mode = mode

    def readable(self):
        return "r" in self._mode

    def writable(self):
        return "w" in self._mode

    def readinto(self, buffer):
        return self._sock.recv_into(buffer)

    def write(self, data):
        return self._sock.send(data)

    def close(self):
        if not self.closed:
            super().close()
            self._sock._decref_socketios()


class HostSocket:
    """A client TCP socket whose connection the host makes and holds."""

    def __init__(self, family=_socket.AF_INET, type=_socket.SOCK_STREAM, proto=0, fileno=None):
        if fileno is not None:
            raise OSError(errno.ENOTSUP, "sockets from file descriptors are not available in the sandbox")
        if type & 0xF != _socket.SOCK_STREAM:
            raise OSError(errno.EPROTONOSUPPORT, "only TCP client sockets are available in the sandbox")
        self.family = family
        self.type = _socket.SOCK_STREAM
        self.proto = proto
        self._id = None
        self._peer = None
        self._timeout = _socket.getdefaulttimeout()
        self._closed = False
        self._io_refs = 0

    # -- settings ------------------------------------------------------------

    def settimeout(self, value):
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self):
        return self._timeout

    def setblocking(self, flag):
        self._timeout = None if flag else 0.0

    def getblocking(self):
        return self._timeout != 0.0

    def _ms(self):
        if self._timeout is None:
            return 0
        return max(1, int(self._timeout * 1000))

    def setsockopt(self, *args):
        pass

    def getsockopt(self, level, option, buflen=None):
        return 0 if buflen is None else b"\0" * buflen

    def fileno(self):
        return -1

    def getpeername(self):
        if self._peer is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self._peer

    def getsockname(self):
        return ("0.0.0.0", 0)

    # -- connecting ----------------------------------------------------------

    def connect(self, address):
        if self._id is not None:
            raise OSError(errno.EISCONN, "already connected")
        host, port = address[0], address[1]
        self._id = _check(_host.net_connect(str(host), int(port), self._ms()))
        self._peer = (host, port)

    def connect_ex(self, address):
        try:
            self.connect(address)
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    def bind(self, address):
        raise OSError(errno.EACCES, "binding sockets is not available in the sandbox")

    def listen(self, backlog=0):
        raise OSError(errno.EACCES, "listening is not available in the sandbox")

    def accept(self):
        raise OSError(errno.EACCES, "listening is not available in the sandbox")

    def _conn(self):
        if self._id is None:
            raise OSError(errno.ENOTCONN if not self._closed else errno.EBADF, "the socket is not connected")
        return self._id

    # -- data ----------------------------------------------------------------

    def send(self, data, flags=0):
        view = memoryview(data).cast("B")[:_MAX_SEND]
        return _check(_host.net_send(self._conn(), bytes(view), self._ms()))

    def sendall(self, data, flags=0):
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view)
            view = view[sent:]

    def recv(self, bufsize, flags=0):
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0:
            return b""
        return _check(_host.net_recv(self._conn(), bufsize, self._ms()))

    def recv_into(self, buffer, nbytes=0, flags=0):
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def makefile(self, mode="r", buffering=None, *, encoding=None, errors=None, newline=None):
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        raw = _SocketIO(self, "rw" if ("r" in mode and "w" in mode) else ("w" if "w" in mode else "r"))
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if "r" in mode and "w" in mode:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif "r" in mode:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode
        return text

    def _decref_socketios(self):
        self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._really_close()

    def _really_close(self):
        if self._id is not None:
            _host.net_close(self._id)
            self._id = None

    def shutdown(self, how):
        pass

    def close(self):
        self._closed = True
        if self._io_refs <= 0:
            self._really_close()

    def detach(self):
        raise OSError(errno.ENOTSUP, "sockets in the sandbox cannot be detached")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._really_close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else ("connected" if self._id else "new")
        return f"<eryx HostSocket {state} peer={self._peer!r}>"


def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, *, all_errors=False):
    """`socket.create_connection` through the host."""
    host, port = address
    sock = HostSocket()
    if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
        sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    """Names are resolved by the host when it connects: this hands the name
    back as the address to connect to."""
    if host is None:
        host = "localhost"
    if isinstance(host, bytes):
        host = host.decode("idna")
    if isinstance(port, str):
        port = int(port) if port.isdigit() else {"http": 80, "https": 443}.get(port, 0)
    port = port or 0
    if ":" in str(host):
        return [(_socket.AF_INET6, _socket.SOCK_STREAM, 6, "", (host, port, 0, 0))]
    return [(_socket.AF_INET, _socket.SOCK_STREAM, 6, "", (host, port))]


# --- select -------------------------------------------------------------------

import select as _select_module

_real_select = getattr(_select_module, "select", None)
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
# How long one host wait lasts when several sockets are watched, or the wait
# has no end (ms).
_WAIT_SLICE_MS = 50


def _readable(sock, timeout_ms):
    if sock._id is None:
        return True
    return _host.net_readable(sock._id, timeout_ms)


def _wait(socks, readable, timeout):
    """Polls `socks` for readability until one is or `timeout` (seconds,
    None: no end) passes; `readable(sock, ms)` checks one."""
    import time

    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        ready = [s for s in socks if readable(s, 0)]
        if ready or (deadline is not None and time.monotonic() >= deadline) or not socks:
            return ready
        left_ms = _WAIT_SLICE_MS if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
        if len(socks) == 1:
            if readable(socks[0], min(left_ms, 1000)):
                return list(socks)
        else:
            time.sleep(min(left_ms, _WAIT_SLICE_MS) / 1000)


def select(rlist, wlist, xlist, timeout=None):
    """`select.select` that understands the host's sockets (which are
    always writable). Host sockets cannot be mixed with other files."""
    rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
    every = rlist + wlist + xlist
    host = [s for s in every if isinstance(s, HostSocket)]
    if not host:
        if _real_select is None:
            raise OSError(errno.ENOTSUP, "select is not available")
        return _real_select(rlist, wlist, xlist, timeout)
    if len(host) != len(every):
        raise OSError(errno.EINVAL, "the sandbox's sockets cannot be selected with other files")
    if wlist:
        return [s for s in rlist if _readable(s, 0)], wlist, []
    return _wait(rlist, _readable, timeout), [], []


class _Poll:
    """`select.poll()` for the host's sockets."""

    def __init__(self):
        self._socks = {}

    def register(self, sock, eventmask=POLLIN | POLLPRI | POLLOUT):
        if not isinstance(sock, HostSocket):
            raise OSError(errno.EINVAL, "only the sandbox's sockets can be polled")
        self._socks[id(sock)] = (sock, eventmask)

    def modify(self, sock, eventmask):
        if id(sock) not in self._socks:
            raise FileNotFoundError(errno.ENOENT, "not registered")
        self.register(sock, eventmask)

    def unregister(self, sock):
        self._socks.pop(id(sock))

    def poll(self, timeout=None):
        if timeout is not None and timeout < 0:
            timeout = None
        seconds = None if timeout is None else timeout / 1000
        out = [(s, POLLOUT) for s, mask in self._socks.values() if mask & POLLOUT]
        readers = [s for s, mask in self._socks.values() if mask & (POLLIN | POLLPRI)]
        if out:
            ready = [s for s in readers if _readable(s, 0)]
        else:
            ready = _wait(readers, _readable, seconds)
        events = {}
        for s in ready:
            events[s] = events.get(s, 0) | POLLIN
        for s, mask in out:
            events[s] = events.get(s, 0) | mask
        return [(-1, mask) for s, mask in events.items()]


# --- ssl ----------------------------------------------------------------------


def _make_ssl():
    import enum

    ssl = types.ModuleType("ssl", "TLS through the eryx host (rustls); a subset of CPython's ssl module.")

    class SSLError(OSError):
        library = "eryx"
        reason = ""

    class SSLCertVerificationError(SSLError, ValueError):
        verify_code = 0
        verify_message = ""

    class SSLZeroReturnError(SSLError):
        pass

    class SSLWantReadError(SSLError):
        pass

    class SSLWantWriteError(SSLError):
        pass

    class SSLSyscallError(SSLError):
        pass

    class SSLEOFError(SSLError):
        pass

    class VerifyMode(enum.IntEnum):
        CERT_NONE = 0
        CERT_OPTIONAL = 1
        CERT_REQUIRED = 2

    class TLSVersion(enum.IntEnum):
        MINIMUM_SUPPORTED = -2
        SSLv3 = 768
        TLSv1 = 769
        TLSv1_1 = 770
        TLSv1_2 = 771
        TLSv1_3 = 772
        MAXIMUM_SUPPORTED = -1

    class _ASN1Object:
        def __init__(self, nid, shortname, longname, oid):
            self.nid, self.shortname, self.longname, self.oid = nid, shortname, longname, oid

    class Purpose:
        SERVER_AUTH = _ASN1Object(129, "serverAuth", "TLS Web Server Authentication", "1.3.6.1.5.5.7.3.1")
        CLIENT_AUTH = _ASN1Object(130, "clientAuth", "TLS Web Client Authentication", "1.3.6.1.5.5.7.3.2")

    class SSLSocket(HostSocket):
        """A connection the host has started TLS on."""

        _server_hostname = None
        _alpn = ""
        context = None

        @property
        def server_hostname(self):
            return self._server_hostname

        def version(self):
            return "TLSv1.2+"

        def selected_alpn_protocol(self):
            return self._alpn or None

        def selected_npn_protocol(self):
            return None

        def cipher(self):
            return None

        def shared_ciphers(self):
            return None

        def compression(self):
            return None

        def getpeercert(self, binary_form=False):
            # The host verified the certificate for `server_hostname` and does
            # not hand it over: the dict holds just the name it was verified
            # for, so clients that match names themselves (urllib3) agree.
            if binary_form:
                return b""
            name = self._server_hostname or ""
            try:
                import ipaddress

                ipaddress.ip_address(name)
                kind = "IP Address"
            except ValueError:
                kind = "DNS"
            return {"subject": ((("commonName", name),),), "subjectAltName": ((kind, name),)}

        def do_handshake(self, block=False):
            pass

        def unwrap(self):
            raise SSLError(errno.ENOTSUP, "TLS cannot be unwrapped in the sandbox")

        def pending(self):
            return 0

    class SSLContext:
        """Settings for `wrap_socket`. The host always verifies the server's
        certificate and name against its roots."""

        sslsocket_class = SSLSocket

        def __init__(self, protocol=None, *args, **kwargs):
            self.protocol = protocol if protocol is not None else PROTOCOL_TLS_CLIENT
            self.check_hostname = self.protocol == PROTOCOL_TLS_CLIENT
            self.verify_mode = VerifyMode.CERT_REQUIRED if self.check_hostname else VerifyMode.CERT_NONE
            self.options = OP_ALL | OP_NO_SSLv2 | OP_NO_SSLv3
            self.verify_flags = 0
            self.minimum_version = TLSVersion.TLSv1_2
            self.maximum_version = TLSVersion.MAXIMUM_SUPPORTED
            self.post_handshake_auth = None
            self.hostname_checks_common_name = False
            self.keylog_filename = None
            self.sni_callback = None
            self.security_level = 2
            self._alpn = []

        def load_default_certs(self, purpose=None):
            pass

        def set_default_verify_paths(self):
            pass

        def load_verify_locations(self, cafile=None, capath=None, cadata=None):
            # The host's roots (and any the embedder added) are the trust
            # anchors; certificates from inside the sandbox are not trusted.
            pass

        def load_cert_chain(self, certfile, keyfile=None, password=None):
            raise SSLError(errno.ENOTSUP, "client certificates are not available in the sandbox")

        def set_ciphers(self, ciphers):
            pass

        def get_ciphers(self):
            return []

        def set_ecdh_curve(self, name):
            pass

        def set_alpn_protocols(self, protocols):
            self._alpn = [str(p) for p in protocols]

        def set_npn_protocols(self, protocols):
            pass

        def get_ca_certs(self, binary_form=False):
            return []

        def cert_store_stats(self):
            return {"x509": 0, "crl": 0, "x509_ca": 0}

        def session_stats(self):
            return {}

        def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                        suppress_ragged_eofs=True, server_hostname=None, session=None):
            if server_side:
                raise SSLError(errno.ENOTSUP, "TLS servers are not available in the sandbox")
            if not isinstance(sock, HostSocket):
                raise TypeError("wrap_socket needs a socket of the sandbox")
            if server_hostname is None:
                if self.check_hostname:
                    raise ValueError("check_hostname requires server_hostname")
                server_hostname = sock._peer[0] if sock._peer else ""
            if isinstance(server_hostname, bytes):
                server_hostname = server_hostname.decode("ascii")
            wrapped = SSLSocket.__new__(SSLSocket)
            wrapped.__dict__.update(sock.__dict__)
            wrapped._alpn = _check(_host.net_start_tls(sock._conn(), server_hostname, self._alpn, sock._ms()))
            wrapped._server_hostname = server_hostname
            wrapped.context = self
            # The connection now belongs to the wrapped socket.
            sock._id = None
            sock._closed = True
            sock._io_refs = 0
            return wrapped

        def wrap_bio(self, *args, **kwargs):
            raise SSLError(errno.ENOTSUP, "memory BIOs are not available in the sandbox")

    def create_default_context(purpose=Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
        return SSLContext(PROTOCOL_TLS_CLIENT)

    def DER_cert_to_PEM_cert(der):
        import base64
        import textwrap

        body = "\n".join(textwrap.wrap(base64.standard_b64encode(der).decode("ascii"), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"

    def PEM_cert_to_DER_cert(pem):
        import base64

        body = pem.strip().removeprefix("-----BEGIN CERTIFICATE-----").removesuffix("-----END CERTIFICATE-----")
        return base64.decodebytes(body.encode("ascii"))

    def get_default_verify_paths():
        return types.SimpleNamespace(cafile=None, capath=None, openssl_cafile_env="SSL_CERT_FILE",
                                     openssl_cafile="", openssl_capath_env="SSL_CERT_DIR", openssl_capath="")

    PROTOCOL_SSLv23 = PROTOCOL_TLS = 2
    PROTOCOL_TLS_CLIENT = 16
    PROTOCOL_TLS_SERVER = 17
    OP_ALL = 0x80000050
    OP_NO_SSLv2 = 0
    OP_NO_SSLv3 = 0x02000000
    OP_NO_TLSv1 = 0x04000000
    OP_NO_TLSv1_1 = 0x10000000
    OP_NO_TLSv1_2 = 0x08000000
    OP_NO_TLSv1_3 = 0x20000000
    OP_NO_COMPRESSION = 0x20000
    OP_NO_TICKET = 0x4000
    OP_NO_RENEGOTIATION = 0x40000000
    OP_CIPHER_SERVER_PREFERENCE = 0x400000
    OP_SINGLE_DH_USE = 0
    OP_SINGLE_ECDH_USE = 0
    OP_ENABLE_MIDDLEBOX_COMPAT = 0x100000
    OP_LEGACY_SERVER_CONNECT = 0x4

    names = dict(locals())
    for name, value in names.items():
        if name in ("enum", "ssl", "names"):
            continue
        setattr(ssl, name, value)
        if isinstance(value, type):
            value.__module__ = "ssl"
    for mode in VerifyMode:
        setattr(ssl, mode.name, mode)
    ssl.CertificateError = SSLCertVerificationError
    ssl.SocketType = HostSocket
    ssl.HAS_SNI = True
    ssl.HAS_ALPN = True
    ssl.HAS_NPN = False
    ssl.HAS_ECDH = True
    ssl.HAS_NEVER_CHECK_COMMON_NAME = True
    ssl.HAS_TLSv1 = ssl.HAS_TLSv1_1 = ssl.HAS_SSLv2 = ssl.HAS_SSLv3 = False
    ssl.HAS_TLSv1_2 = ssl.HAS_TLSv1_3 = True
    ssl.OPENSSL_VERSION = "rustls (through the eryx host)"
    ssl.OPENSSL_VERSION_NUMBER = 0x30000000
    ssl.OPENSSL_VERSION_INFO = (3, 0, 0, 0, 0)
    ssl.VERIFY_DEFAULT = 0
    ssl.VERIFY_X509_STRICT = 0x20
    ssl.VERIFY_X509_PARTIAL_CHAIN = 0x80000
    ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE = 40
    ssl.ALERT_DESCRIPTION_INTERNAL_ERROR = 80
    ssl._create_default_https_context = create_default_context
    ssl._create_unverified_context = create_default_context
    ssl._create_stdlib_context = create_default_context
    return ssl


def install():
    """Puts the host's sockets in `socket` and an `ssl` module in
    `sys.modules` (CPython's own needs OpenSSL, which this build lacks)."""
    _socket.socket = HostSocket
    _socket.SocketType = HostSocket
    _socket.create_connection = create_connection
    _socket.getaddrinfo = getaddrinfo
    for name, value in (("IPPROTO_TCP", 6), ("TCP_NODELAY", 1), ("SOL_SOCKET", 0xFFFF),
                        ("SO_KEEPALIVE", 8), ("SHUT_RDWR", 2), ("SHUT_WR", 1), ("SHUT_RD", 0)):
        if not hasattr(_socket, name):
            setattr(_socket, name, value)
    _select_module.select = select
    _select_module.poll = _Poll
    for name in ("POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP", "POLLNVAL"):
        if not hasattr(_select_module, name):
            setattr(_select_module, name, globals()[name])
    try:
        import ssl  # noqa: F401  (CPython's, if this build ever has OpenSSL)
    except ImportError:
        sys.modules["ssl"] = _make_ssl()
    # Modules imported before this point keep the names they bound.
    client = sys.modules.get("http.client")
    if client is not None:
        client.HTTPConnection._create_connection = staticmethod(create_connection)
