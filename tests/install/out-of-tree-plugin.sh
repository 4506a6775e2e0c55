#!/bin/sh
# out-of-tree-plugin.sh — installs the build into a scratch DESTDIR, builds a plugin
# outside the tree with nothing but the installed marchproxy/plugin.h and
# marchproxy-plugin.pc, and checks that the installed host loads it, runs its config
# validation (FILE:LINE on a bad setting) and that the test-only plugin is not
# installed.
set -eu
: "${MP_BUILDDIR:?}" "${MAKE:=make}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
root="$tmp/root"

if ! $MAKE -C "$MP_BUILDDIR" install DESTDIR="$root" >"$tmp/install.log" 2>&1; then
    tail -n 30 "$tmp/install.log"
    echo "FAIL: make install into DESTDIR failed"
    exit 1
fi
pc=$(find "$root" -name marchproxy-plugin.pc | head -n 1)
[ -n "$pc" ] || { echo "FAIL: marchproxy-plugin.pc not installed"; exit 1; }
host=$(find "$root" -path '*/bin/marchproxy' -type f | head -n 1)
[ -x "$host" ] || { echo "FAIL: marchproxy not installed in bindir"; exit 1; }
if find "$root" -name 'mptest*' | grep -q .; then
    echo "FAIL: the test-only plugin was installed"; exit 1
fi
plugindir=$(PKG_CONFIG_SYSROOT_DIR="$root" PKG_CONFIG_PATH=$(dirname "$pc") \
    pkg-config --variable=plugindir marchproxy-plugin)
case "$plugindir" in */lib*/marchproxy/plugins) ;; *) echo "FAIL: plugindir=$plugindir"; exit 1;; esac
# The bundled plugins are there as .so files, and nothing but .so files.
for so in alb.so lauradb.so; do
    [ -f "$plugindir/$so" ] || { echo "FAIL: $plugindir/$so not installed"; exit 1; }
done
if ls "$plugindir" | grep -v '\.so$' | grep -q .; then
    echo "FAIL: $plugindir holds more than plugins: $(ls "$plugindir" | tr '\n' ' ')"; exit 1
fi

mkdir -p "$tmp/src" "$tmp/plugins" "$tmp/state"
chmod 755 "$tmp/plugins"
cat >"$tmp/src/hello.c" <<'C'
#include <errno.h>
#include <stdlib.h>
#include <marchproxy/plugin.h>

static const char *const keys[] = {"word", NULL};

static int validate(const mp_host_api *api, const mp_config *s, char *err, size_t len)
{
    const char *w;
    int rc = api->cfg_check_keys(s, keys, err, len);
    if (rc < 0)
        return rc;
    if (api->cfg_get_string(s, "word", &w) == -EINVAL)
        return api->cfg_error(api->cfg_lookup(s, "word"), err, len, "word must be a string");
    return 0;
}
static int create(const mp_host_api *api, mp_instance *inst, const mp_config *s, void **st,
                  char *err, size_t len)
{
    (void)api; (void)inst; (void)s; (void)err; (void)len;
    *st = malloc(1);
    return *st ? 0 : -ENOMEM;
}
static void destroy(void *st) { free(st); }

static const mp_plugin_descriptor d = {
    .magic = MP_PLUGIN_MAGIC, .abi_major = MP_ABI_MAJOR, .abi_minor = MP_ABI_MINOR,
    .struct_size = sizeof(mp_plugin_descriptor), .name = "hello", .version = "0.0.1",
    .module_type = MP_MODULE_ALB, .validate_config = validate, .create = create,
    .destroy = destroy,
};
MP_PLUGIN_DEFINE(d)
C
flags=$(PKG_CONFIG_SYSROOT_DIR="$root" PKG_CONFIG_PATH=$(dirname "$pc") \
    pkg-config --cflags --libs marchproxy-plugin)
# shellcheck disable=SC2086
if ! ${CC:-cc} -std=c11 -Wall -Wextra -Werror $flags "$tmp/src/hello.c" -o "$tmp/plugins/hello.so"; then
    echo "FAIL: out-of-tree plugin does not compile against the installed header"
    exit 1
fi
chmod 644 "$tmp/plugins/hello.so"

cat >"$tmp/good.conf" <<CONF
host: { plugin_dir = "$tmp/plugins"; state_dir = "$tmp/state"; };
instances: { hello: { settings: { word = "hi"; }; }; };
CONF
cat >"$tmp/bad.conf" <<CONF
host: { plugin_dir = "$tmp/plugins"; state_dir = "$tmp/state"; };
instances: {
  hello: {
    settings: {
      word = 42;
    };
  };
};
CONF
if ! "$host" -t -c "$tmp/good.conf" >"$tmp/good.out" 2>&1; then
    cat "$tmp/good.out"; echo "FAIL: installed host refused the out-of-tree plugin"; exit 1
fi
if "$host" -t -c "$tmp/bad.conf" >"$tmp/bad.out" 2>&1; then
    echo "FAIL: a bad plugin setting passed -t"; exit 1
fi
if ! grep -q "bad.conf:5: word must be a string" "$tmp/bad.out"; then
    cat "$tmp/bad.out"; echo "FAIL: the plugin's error lacks FILE:LINE"; exit 1
fi
echo "ok: out-of-tree plugin builds against the installed ABI and loads"
