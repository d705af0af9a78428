/*
 * util.c — the engine toolkit shared by every .Call entry point and worker:
 * named-list access (the settings and model contracts), the convergence
 * predicate, growing traces, the one step search, interrupts that do not
 * longjmp, and throttled progress lines.
 *
 * Only the accessors (used by entry points) raise R errors; everything a
 * worker calls returns a value or a status.
 */
#include "vbayes.h"
#include <setjmp.h>
#include <time.h>

/* a jump a progress handler asked for, kept until R resumes it (see below) */
static SEXP unwind_token = NULL; /* preserved once, reused for every message */
static int unwind_pending = 0;

/* ------------------------------------------------------ named lists -- */

SEXP vb_elt(SEXP list, const char *name) {
    SEXP names = Rf_getAttrib(list, R_NamesSymbol);
    if (TYPEOF(list) != VECSXP || TYPEOF(names) != STRSXP) return R_NilValue;
    for (R_xlen_t i = 0; i < Rf_xlength(list); i++)
        if (strcmp(CHAR(STRING_ELT(names, i)), name) == 0) return VECTOR_ELT(list, i);
    return R_NilValue;
}

SEXP vb_elt_req(SEXP list, const char *name, const char *what) {
    if (TYPEOF(list) != VECSXP || TYPEOF(Rf_getAttrib(list, R_NamesSymbol)) != STRSXP)
        Rf_error("'%s' must be a named list", what);
    SEXP x = vb_elt(list, name);
    if (x == R_NilValue) Rf_error("'%s' has no element '%s'", what, name);
    return x;
}

const double *vb_real_elt(SEXP list, const char *name, R_xlen_t len, const char *what) {
    SEXP x = vb_elt_req(list, name, what);
    if (TYPEOF(x) != REALSXP) Rf_error("'%s$%s' must be a double vector", what, name);
    if (len >= 0 && Rf_xlength(x) != len)
        Rf_error("'%s$%s' has length %lld, expected %lld", what, name, (long long)Rf_xlength(x),
                 (long long)len);
    return REAL(x);
}

/* A whole number in [lo, hi] given as integer or double (never cast out of range). */
int vb_int_elt(SEXP list, const char *name, int lo, int hi, const char *what) {
    SEXP x = vb_elt_req(list, name, what);
    double v;
    if (Rf_length(x) != 1) Rf_error("'%s$%s' must be a single number", what, name);
    if (TYPEOF(x) == INTSXP)
        v = INTEGER(x)[0] == NA_INTEGER ? NA_REAL : (double)INTEGER(x)[0];
    else if (TYPEOF(x) == REALSXP)
        v = REAL(x)[0];
    else
        Rf_error("'%s$%s' must be a number", what, name);
    if (!R_FINITE(v) || v != floor(v) || v < lo || v > hi)
        Rf_error("'%s$%s' must be a whole number in [%d, %d]", what, name, lo, hi);
    return (int)v;
}

double vb_num_elt(SEXP list, const char *name, double lo, double hi, const char *what) {
    SEXP x = vb_elt_req(list, name, what);
    if (Rf_length(x) != 1 || (TYPEOF(x) != REALSXP && TYPEOF(x) != INTSXP))
        Rf_error("'%s$%s' must be a single number", what, name);
    double v = TYPEOF(x) == REALSXP          ? REAL(x)[0]
               : INTEGER(x)[0] == NA_INTEGER ? NA_REAL
                                             : (double)INTEGER(x)[0];
    if (!R_FINITE(v) || v < lo || v > hi)
        Rf_error("'%s$%s' must be a finite number in [%g, %g]", what, name, lo, hi);
    return v;
}

int vb_flag_elt(SEXP list, const char *name, const char *what) {
    SEXP x = vb_elt_req(list, name, what);
    if (TYPEOF(x) != LGLSXP || Rf_length(x) != 1 || LOGICAL(x)[0] == NA_LOGICAL)
        Rf_error("'%s$%s' must be TRUE or FALSE", what, name);
    return LOGICAL(x)[0];
}

SEXP vb_named_list(const char **names, int *nprot) {
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, names));
    (*nprot)++;
    return out;
}

SEXP vb_real_vec(R_xlen_t n, const double *src) {
    SEXP x = Rf_allocVector(REALSXP, n);
    if (n > 0) memcpy(REAL(x), src, sizeof(double) * (size_t)n);
    return x;
}

SEXP vb_real_mat(int nr, int nc, const double *src) {
    SEXP x = Rf_allocMatrix(REALSXP, nr, nc);
    if ((size_t)nr * nc > 0) memcpy(REAL(x), src, sizeof(double) * (size_t)nr * nc);
    return x;
}

void vb_settings_read(SEXP control, vb_settings *s) {
    const char *w = "control";
    s->maxit = vb_int_elt(control, "maxit", 1, INT_MAX - 1, w);
    s->tol = vb_num_elt(control, "tol", 0, R_PosInf, w);
    if (!(s->tol > 0)) Rf_error("'control$tol' must be positive");
    s->quiet = vb_flag_elt(control, "quiet", w);
    s->joint_max = vb_int_elt(control, "joint_means", 0, INT_MAX, w);
}

/* ------------------------------------------------ convergence, traces -- */

int vb_tol_met(double old, double new_, double tol) {
    return R_FINITE(old) && R_FINITE(new_) && fabs(new_ - old) <= tol * (fabs(new_) + tol);
}

void vb_trace_init(vb_trace *tr) {
    tr->n = 0;
    tr->cap = 64;
    tr->x = (double *)R_alloc(tr->cap, sizeof(double));
}

void vb_trace_push(vb_trace *tr, double value) {
    if (tr->n == tr->cap) {
        int cap = tr->cap < INT_MAX / 2 ? 2 * tr->cap : INT_MAX;
        double *x = (double *)R_alloc(cap, sizeof(double));
        memcpy(x, tr->x, sizeof(double) * tr->n);
        tr->x = x;
        tr->cap = cap;
    }
    if (tr->n < tr->cap) tr->x[tr->n++] = value;
}

/* ------------------------------------------------------- step search -- */

double vb_step_slack(double old) {
    return 1e-13 * fabs(old);
}

int vb_step_search(vb_step_try try_, void *ctx, double old, double *a_out, double *val_out) {
    int last = VB_STALLED;
    double a = 1.0, slack = vb_step_slack(old);
    for (int h = 0; h <= VB_STEP_HALVINGS; h++, a *= 0.5) {
        double val;
        int st = try_(a, ctx, &val);
        if (st == VB_INTERRUPTED) return st;
        if (st != VB_OK) {
            last = st;
            continue;
        }
        if (R_FINITE(val) && val >= old - slack) {
            *a_out = a;
            *val_out = val;
            return VB_OK;
        }
        last = R_FINITE(val) ? VB_STALLED : VB_NONFINITE;
    }
    return last == VB_NONFINITE || last == VB_NOT_PD ? last : VB_STALLED;
}

/* -------------------------------------------- interrupts and progress -- */

static void check_interrupt_fn(void *dummy) {
    (void)dummy;
    R_CheckUserInterrupt();
}

int vb_interrupted(void) {
    static clock_t last = 0;
    if (unwind_pending) return 1;
    clock_t now = clock();
    if (now != (clock_t)-1 && now - last < CLOCKS_PER_SEC / 10 && now >= last) return 0;
    last = now;
    return !R_ToplevelExec(check_interrupt_fn, NULL);
}

/*
 * Progress lines are R messages (message(), so suppressMessages() and
 * withCallingHandlers() see them), emitted from inside a worker.  A handler
 * may leave by a longjmp (tryCatch(message = ), a calling handler that
 * stops, an interrupt while printing).  R_UnwindProtect catches that jump,
 * its clean-up function longjmps back here (the jump never crosses the
 * worker's frames), and the jump is kept pending: vb_interrupted() then
 * reports 1, the worker returns VB_INTERRUPTED, the entry point restores its
 * state and returns, and R's check_status() calls C_vb_resume_unwind() to
 * continue the jump to the handler that asked for it.
 */

static SEXP emit_message(void *text) {
    SEXP call = PROTECT(Rf_lang2(Rf_install("message"), Rf_mkString((const char *)text)));
    Rf_eval(call, R_BaseEnv);
    UNPROTECT(1);
    return R_NilValue;
}

static void emit_cleanup(void *jb, Rboolean jump) {
    if (jump) longjmp(*(jmp_buf *)jb, 1);
}

int vb_unwind_pending(void) {
    return unwind_pending;
}

void vb_progress_init(vb_progress *pr, int quiet) {
    pr->last = (double)clock() / CLOCKS_PER_SEC;
    pr->quiet = quiet;
    pr->every = 1.0;
    SEXP opt = Rf_GetOption1(Rf_install("vbayes.progress_interval"));
    if (TYPEOF(opt) == REALSXP && Rf_length(opt) == 1 && R_FINITE(REAL(opt)[0]) &&
        REAL(opt)[0] >= 0)
        pr->every = REAL(opt)[0];
    unwind_pending = 0; /* a jump nobody resumed belongs to an earlier run */
}

void vb_progress_tick(vb_progress *pr, const char *what, int it, double elbo) {
    if (pr->quiet || unwind_pending) return;
    double now = (double)clock() / CLOCKS_PER_SEC;
    if (now - pr->last < pr->every) return;
    pr->last = now;
    char text[256];
    snprintf(text, sizeof text, "%s: iteration %d, ELBO %.6f", what, it, elbo);
    if (unwind_token == NULL) {
        unwind_token = R_MakeUnwindCont();
        R_PreserveObject(unwind_token);
    }
    jmp_buf jb;
    if (setjmp(jb)) {
        unwind_pending = 1;
        return;
    }
    R_UnwindProtect(emit_message, text, emit_cleanup, &jb, unwind_token);
}

/*
 * Continues a jump a progress handler asked for, given the status of the
 * engine it stopped (VB_INTERRUPTED; a no-op when no jump is pending).
 */
SEXP C_vb_resume_unwind(SEXP status) {
    if (TYPEOF(status) != INTSXP || Rf_length(status) != 1 || INTEGER(status)[0] != VB_INTERRUPTED)
        Rf_error("'status' must be the interrupted status code %d (internal error)",
                 VB_INTERRUPTED);
    if (unwind_pending && unwind_token != NULL) {
        unwind_pending = 0;
        R_ContinueUnwind(unwind_token);
    }
    return R_NilValue;
}
