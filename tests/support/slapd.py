"""A real OpenLDAP `slapd` (Debian package) on loopback with a small directory, for the proxy's LDAP tests.

dc=example,dc=com with people alice (password alice-pw, member of cn=pexip-users), bob (bob-pw, in no group) and
a service account cn=reader (reader-pw) for the search mode. With `tls` it also serves ldaps:// and StartTLS.
Loaded with slapadd before the start, so the server is ready when its port answers. `stop()` ends the process this
helper started (its pid), `start()` brings it back.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.net import free_port, wait_for_port
from tests.support.processes import stop_process

SUFFIX = "dc=example,dc=com"
GROUP = f"cn=pexip-users,ou=groups,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"

CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {where}/slapd.pid
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw admin-pw
directory {where}/db
access to attrs=userPassword by self read by anonymous auth by * none
access to * by * read
"""
TLS = """\
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
"""

DATA = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
userPassword: alice-pw

dn: uid=bob,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-pw

dn: cn=reader,{SUFFIX}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: reader-pw

dn: {GROUP}
objectClass: groupOfNames
cn: pexip-users
member: uid=alice,ou=people,{SUFFIX}
"""


class Slapd:
    def __init__(self, where: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (CA file, certificate with its chain, key) to also serve ldaps:// and StartTLS."""
        self.where = where
        (where / "db").mkdir(parents=True, exist_ok=True)
        self.config = where / "slapd.conf"
        tls_lines = TLS.format(ca=tls[0], cert=tls[1], key=tls[2]) if tls else ""
        self.config.write_text(tls_lines + CONFIG.format(where=where, suffix=SUFFIX))
        (where / "data.ldif").write_text(DATA)
        subprocess.run(["slapadd", "-f", str(self.config), "-l", str(where / "data.ldif")], check=True,
                       capture_output=True, timeout=30)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://localhost:{self.tls_port}"

    def start(self) -> None:
        # -d 0: stay in the foreground (no fork), so the pid is the one this helper stops.
        urls = f"ldap://127.0.0.1:{self.port}/" + (f" ldaps://127.0.0.1:{self.tls_port}/" if self.tls_port else "")
        self.proc = subprocess.Popen(["slapd", "-d", "0", "-h", urls,
                                      "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, 15, self.proc)
        if self.tls_port:
            wait_for_port("127.0.0.1", self.tls_port, 15, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        deadline = time.monotonic() + 5
        while (self.where / "slapd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
