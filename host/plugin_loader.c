/*
 * plugin_loader.c — see plugin_loader.h.
 *
 * Why a private copy: dlopen of a path that is already open returns the old handle,
 * and overwriting a mapped .so in place corrupts the running code. Copying the file to
 * <state_dir>/plugin-cache/<name>-<sha256 prefix>.so first gives every distinct build
 * its own path, and the operator's file can be replaced at any time.
 *
 * Why the permission checks: whoever can write a plugin file runs code in this process.
 */
#include "plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define PLUGIN_MAX_BYTES (512u * 1024 * 1024)
#define PLUGIN_MAX_FILES 256

static int check_owner_and_mode(const char *path, const struct stat *st, const char *what,
                                char *err, size_t err_len)
{
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(err, err_len, "%s: refusing %s writable by group or others (mode %04o)", path,
                 what, (unsigned)(st->st_mode & 07777));
        return -EPERM;
    }
    if (st->st_uid != 0 && st->st_uid != geteuid()) {
        snprintf(err, err_len, "%s: refusing %s owned by uid %u (neither root nor us)", path,
                 what, (unsigned)st->st_uid);
        return -EPERM;
    }
    return 0;
}

int mp_plugin_dir_check(const char *dir, char *err, size_t err_len)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        int e = errno;
        snprintf(err, err_len, "plugin_dir %s: %s", dir, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, err_len, "plugin_dir %s: not a directory", dir);
        return -ENOTDIR;
    }
    return check_owner_and_mode(dir, &st, "a plugin directory", err, err_len);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int mp_plugin_list(const char *dir, char ***out, char *err, size_t err_len)
{
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        snprintf(err, err_len, "plugin_dir %s: %s", dir, strerror(e));
        return -e;
    }
    char **v = calloc(PLUGIN_MAX_FILES + 1, sizeof(char *));
    size_t n = 0;
    int rc = v ? 0 : -ENOMEM;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 4 || strcmp(de->d_name + len - 3, ".so") != 0)
            continue;
        if (n == PLUGIN_MAX_FILES) {
            snprintf(err, err_len, "plugin_dir %s: more than %d plugin files", dir,
                     PLUGIN_MAX_FILES);
            rc = -E2BIG;
            break;
        }
        if (asprintf(&v[n], "%s/%s", dir, de->d_name) < 0) {
            v[n] = NULL;
            rc = -ENOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc < 0) {
        mp_plugin_list_free(v);
        return rc;
    }
    qsort(v, n, sizeof(char *), cmp_str);
    *out = v;
    return 0;
}

void mp_plugin_list_free(char **paths)
{
    if (!paths)
        return;
    for (char **p = paths; *p; p++)
        free(*p);
    free(paths);
}

int mp_file_sha256(const char *path, char out[65], char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, err_len, "%s: %s", path, strerror(e));
        return -e;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) ? 0 : -ENOMEM;
    unsigned char buf[65536];
    ssize_t r;
    while (rc == 0 && (r = read(fd, buf, sizeof(buf))) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            snprintf(err, err_len, "%s: %s", path, strerror(errno));
            break;
        }
        EVP_DigestUpdate(md, buf, (size_t)r);
    }
    close(fd);
    unsigned char digest[32];
    unsigned int dlen = 0;
    if (rc == 0 && EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen == 32) {
        for (int i = 0; i < 32; i++)
            sprintf(out + 2 * i, "%02x", digest[i]);
        out[64] = '\0';
    } else if (rc == 0) {
        rc = -EIO;
        snprintf(err, err_len, "%s: cannot hash", path);
    }
    EVP_MD_CTX_free(md);
    return rc;
}

/* Copies src to dst (created 0500, replaced atomically through a temporary name). */
static int copy_file(const char *src, const char *dst, char *err, size_t err_len)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", dst, (int)getpid());
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        int e = errno;
        snprintf(err, err_len, "%s: %s", src, strerror(e));
        return -e;
    }
    int outfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    if (outfd < 0) {
        int e = errno;
        close(in);
        snprintf(err, err_len, "%s: %s", tmp, strerror(e));
        return -e;
    }
    int rc = 0;
    char buf[65536];
    for (;;) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(outfd, buf + off, (size_t)(r - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                rc = -errno;
                break;
            }
            off += w;
        }
        if (rc < 0)
            break;
    }
    close(in);
    if (close(outfd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && (fchmodat(AT_FDCWD, tmp, 0500, 0) < 0 || rename(tmp, dst) < 0))
        rc = -errno;
    if (rc < 0) {
        snprintf(err, err_len, "copying %s to %s: %s", src, dst, strerror(-rc));
        unlink(tmp);
    }
    return rc;
}

static bool name_valid(const char *name)
{
    size_t n = name ? strnlen(name, 33) : 0;
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int mp_plugin_descriptor_check(const mp_plugin_descriptor *d, const char *path, char *err,
                               size_t err_len)
{
    if (!d) {
        snprintf(err, err_len, "%s: %s() returned NULL", path, MP_PLUGIN_ENTRY_SYMBOL);
        return -EINVAL;
    }
    if (d->magic != MP_PLUGIN_MAGIC) {
        snprintf(err, err_len, "%s: bad descriptor magic 0x%08x (expected 0x%08x)", path,
                 d->magic, MP_PLUGIN_MAGIC);
        return -EINVAL;
    }
    if (d->abi_major != MP_ABI_MAJOR || d->abi_minor > MP_ABI_MINOR) {
        snprintf(err, err_len,
                 "%s: plugin built for ABI %u.%u, this host provides ABI %u.%u (major must "
                 "match, minor must not be newer)",
                 path, d->abi_major, d->abi_minor, MP_ABI_MAJOR, MP_ABI_MINOR);
        return -EPROTO;
    }
    if (d->struct_size < offsetof(mp_plugin_descriptor, custom_stats)) {
        snprintf(err, err_len, "%s: descriptor too small (%u bytes)", path, d->struct_size);
        return -EINVAL;
    }
    if (!name_valid(d->name)) {
        snprintf(err, err_len, "%s: plugin name must be 1-32 of [a-z0-9_-]", path);
        return -EINVAL;
    }
    if (!d->version || !*d->version || strnlen(d->version, 64) >= 64) {
        snprintf(err, err_len, "%s: plugin %s has no version string (1-63 chars)", path,
                 d->name);
        return -EINVAL;
    }
    if (!d->validate_config || !d->create || !d->destroy) {
        snprintf(err, err_len, "%s: plugin %s lacks validate_config, create or destroy", path,
                 d->name);
        return -EINVAL;
    }
    return 0;
}

void mp_plugin_image_ref(mp_plugin_image *img) { img->refs++; }

static void image_free(mp_plugin_image *img)
{
    if (img->dl)
        dlclose(img->dl);
    if (img->copy_path && !img->keep_copy)
        unlink(img->copy_path);
    free(img->name);
    free(img->version);
    free(img->src_path);
    free(img->copy_path);
    free(img);
}

void mp_plugin_image_unref(mp_host *h, mp_plugin_image *img)
{
    if (--img->refs > 0)
        return;
    for (mp_plugin_image **pp = &h->images; *pp; pp = &(*pp)->next)
        if (*pp == img) {
            *pp = img->next;
            break;
        }
    mp_debug("unloading plugin %s %s (%.12s)", img->name, img->version, img->hash);
    image_free(img);
}

/* dlopen the private copy and check what its entry point returns. `shown` names the
 * file in messages. On failure the caller frees img. */
static int image_open(mp_plugin_image *img, const char *shown, char *err, size_t err_len)
{
    int rc;
    dlerror();
    img->dl = dlopen(img->copy_path, RTLD_NOW | RTLD_LOCAL);
    if (!img->dl) {
        const char *why = dlerror();
        snprintf(err, err_len, "%s: cannot load: %s", shown, why ? why : "unknown dlopen error");
        return -ENOEXEC;
    }
    dlerror();
    void *sym = dlsym(img->dl, MP_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        snprintf(err, err_len, "%s: not a MarchProxy plugin (no %s symbol)", shown,
                 MP_PLUGIN_ENTRY_SYMBOL);
        return -ENOEXEC;
    }
    mp_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof(entry)); /* object-to-function pointer, as dlsym requires */
    img->desc = entry();
    if ((rc = mp_plugin_descriptor_check(img->desc, shown, err, err_len)) < 0)
        return rc;
    img->name = strdup(img->desc->name);
    img->version = strdup(img->desc->version);
    return img->name && img->version ? 0 : -ENOMEM;
}

/* Hashes `path`; when an image with that content is loaded, takes a reference on it
 * into *found. Otherwise returns a new image (one reference, hash set) in *fresh. */
static int image_lookup_or_new(mp_host *h, const char *path, mp_plugin_image **found,
                               mp_plugin_image **fresh, char *err, size_t err_len)
{
    char hash[65];
    int rc = mp_file_sha256(path, hash, err, err_len);
    if (rc < 0)
        return rc;
    *found = *fresh = NULL;
    for (mp_plugin_image *img = h->images; img; img = img->next)
        if (strcmp(img->hash, hash) == 0) {
            mp_plugin_image_ref(img);
            *found = img;
            return 0;
        }
    mp_plugin_image *img = calloc(1, sizeof(*img));
    if (!img)
        return -ENOMEM;
    memcpy(img->hash, hash, sizeof(hash));
    img->refs = 1;
    *fresh = img;
    return 0;
}

int mp_plugin_image_load_private(mp_host *h, const char *copy_path, mp_plugin_image **out,
                                 char *err, size_t err_len)
{
    mp_plugin_image *found, *img;
    int rc = image_lookup_or_new(h, copy_path, &found, &img, err, err_len);
    if (rc < 0 || found) {
        *out = found;
        return rc;
    }
    img->keep_copy = true; /* the instance that kept it decides when it goes */
    img->src_path = strdup(copy_path);
    img->copy_path = strdup(copy_path);
    if (!img->src_path || !img->copy_path) {
        image_free(img);
        return -ENOMEM;
    }
    if ((rc = image_open(img, copy_path, err, err_len)) < 0) {
        image_free(img);
        return rc;
    }
    img->next = h->images;
    h->images = img;
    mp_info("reloaded plugin %s %s from its kept copy %s", img->name, img->version, copy_path);
    *out = img;
    return 0;
}

int mp_plugin_image_load(mp_host *h, const char *path, const char *cache_dir,
                         mp_plugin_image **out, char *err, size_t err_len)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        int e = errno;
        snprintf(err, err_len, "%s: %s", path, strerror(e));
        return -e;
    }
    if (S_ISLNK(st.st_mode) && stat(path, &st) < 0) {
        int e = errno;
        snprintf(err, err_len, "%s: dangling symlink (%s)", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s: not a regular file", path);
        return -EINVAL;
    }
    int rc = check_owner_and_mode(path, &st, "a plugin file", err, err_len);
    if (rc < 0)
        return rc;
    if ((uint64_t)st.st_size > PLUGIN_MAX_BYTES) {
        snprintf(err, err_len, "%s: larger than %u MiB", path, PLUGIN_MAX_BYTES >> 20);
        return -EFBIG;
    }
    mp_plugin_image *found, *img;
    if ((rc = image_lookup_or_new(h, path, &found, &img, err, err_len)) < 0 || found) {
        *out = found;
        return rc;
    }
    const char *hash = img->hash;
    img->src_path = strdup(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (asprintf(&img->copy_path, "%s/%.*s-%.16s.so", cache_dir,
                 (int)(strlen(base) - 3), base, hash) < 0)
        img->copy_path = NULL;
    if (!img->src_path || !img->copy_path) {
        image_free(img);
        return -ENOMEM;
    }
    if ((rc = copy_file(path, img->copy_path, err, err_len)) < 0) {
        free(img->copy_path);
        img->copy_path = NULL;
        image_free(img);
        return rc;
    }
    if ((rc = image_open(img, path, err, err_len)) < 0) {
        image_free(img);
        return rc;
    }
    img->next = h->images;
    h->images = img;
    mp_info("loaded plugin %s %s from %s (sha256 %.12s)", img->name, img->version, path, hash);
    *out = img;
    return 0;
}
