/*
 * Aligned text tables for people: columns sized to their widest cell, two
 * spaces apart, numbers right-aligned, the last column clipped to the screen.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct th__table {
    int ncols;
    int nrows, caprows;
    char **cells; /* (nrows + 1) * ncols; row 0 holds the headers */
    unsigned char *right;
};

th__table *th__table_new(int ncols, const char *const *headers)
{
    th__table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ncols = ncols;
    t->right = calloc((size_t)ncols, 1);
    if (!t->right || th__table_add(t, headers) != 0) {
        th__table_free(t);
        return NULL;
    }
    return t;
}

void th__table_free(th__table *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t->right);
    free(t);
}

void th__table_align_right(th__table *t, int col)
{
    if (col >= 0 && col < t->ncols)
        t->right[col] = 1;
}

int th__table_add(th__table *t, const char *const *cells)
{
    if (t->nrows == t->caprows) {
        int cap = t->caprows ? t->caprows * 2 : 16;
        char **p = realloc(t->cells, (size_t)cap * (size_t)t->ncols * sizeof *p);
        if (!p)
            return -1;
        t->cells = p;
        t->caprows = cap;
    }
    char **row = t->cells + (size_t)t->nrows * (size_t)t->ncols;
    for (int c = 0; c < t->ncols; c++) {
        char clean[1024];
        th__fmt_clip(cells[c] ? cells[c] : "-", 400, clean, sizeof clean);
        row[c] = strdup(*clean ? clean : "-");
        if (!row[c]) {
            while (c-- > 0)
                free(row[c]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

int th__table_rows(const th__table *t)
{
    return t->nrows - 1;
}

static void pad(th__sbuf *out, size_t n)
{
    static const char spaces[] = "                                ";
    while (n > 0) {
        size_t k = n < sizeof spaces - 1 ? n : sizeof spaces - 1;
        th__sbuf_add(out, spaces, k);
        n -= k;
    }
}

void th__table_print(const th__table *t, th__sbuf *out, size_t max_width, int max_rows,
                     const char *eol)
{
    size_t width[64] = {0};
    int ncols = t->ncols < 64 ? t->ncols : 64;
    for (int r = 0; r < t->nrows; r++)
        for (int c = 0; c < ncols; c++) {
            size_t w = th__text_width(t->cells[(size_t)r * (size_t)t->ncols + (size_t)c]);
            if (w > width[c])
                width[c] = w;
        }
    int rows = t->nrows;
    if (max_rows >= 0 && rows > max_rows + 1)
        rows = max_rows + 1;
    for (int r = 0; r < rows; r++) {
        size_t col = 0;
        for (int c = 0; c < ncols; c++) {
            const char *cell = t->cells[(size_t)r * (size_t)t->ncols + (size_t)c];
            size_t w = th__text_width(cell);
            int last = c == ncols - 1;
            if (c > 0) {
                pad(out, 2);
                col += 2;
            }
            size_t room = max_width && max_width > col ? max_width - col : 0;
            if (max_width && col >= max_width)
                break;
            if (max_width && (w > room || (!last && width[c] > room))) {
                char clip[1024];
                th__fmt_clip(cell, room, clip, sizeof clip);
                th__sbuf_adds(out, clip);
                break;
            }
            if (t->right[c])
                pad(out, width[c] - w);
            th__sbuf_adds(out, cell);
            if (!t->right[c] && !last)
                pad(out, width[c] - w);
            col += width[c];
        }
        /* Trailing spaces serve nobody. */
        while (out->len > 0 && out->data[out->len - 1] == ' ')
            out->data[--out->len] = '\0';
        th__sbuf_adds(out, eol);
    }
}

void th__table_emit(const th__table *t)
{
    th__sbuf out;
    th__sbuf_init(&out, TH_CLI_MAX_BODY);
    th__table_print(t, &out, isatty(STDOUT_FILENO) ? (size_t)th__term_cols() : 0, -1, "\n");
    fwrite(th__sbuf_str(&out), 1, out.len, stdout);
    th__sbuf_free(&out);
}
