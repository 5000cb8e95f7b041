// libsystemd's service-manager notification and native journal APIs
// (Debian: libsystemd-dev at build time, libsystemd0 at run time).
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
