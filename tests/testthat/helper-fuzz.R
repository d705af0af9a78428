# The fuzz harness of test-fuzz.R.
#
# A case is an unevaluated call with the outcome it must have:
#   "error"        the input is invalid: the call must end in a clear R error
#                  (a sentence, not an internal message such as
#                  "subscript out of bounds" or "REAL() can only be applied to");
#   "ok"           the input is valid: the call must return, and its result
#                  must pass `check` (by default: every number finite);
#   "error_or_ok"  the input is legal but degenerate: a clear error, or a
#                  result that passes `check`, both count; a silent nonsense
#                  result does not;
#   "no_crash"     garbage straight into a registered .Call entry point (not
#                  user-facing): any R error or value counts, a crash does not.
# Every case runs in a forked child (parallel::mcparallel), so a segfault,
# a sanitizer abort or a hang fails that one case and the suite goes on.

fuzz_case <- function(expr, expect = c("error", "ok", "error_or_ok", "no_crash"), check = NULL,
                      pattern = NULL, label = NULL, allow = NULL) {
  expect <- match.arg(expect)
  expr <- substitute(expr)
  if (is.null(label)) label <- paste(deparse(expr, width.cutoff = 500L), collapse = " ")
  if (nchar(label) > 110L) label <- paste0(substr(label, 1L, 107L), "...")
  list(expr = expr, expect = expect, check = check, pattern = pattern, label = label, allow = allow)
}
# `allow`: a regex of an R message that is clear in this case although it
# would not be in general (e.g. "object 'x' not found" for newdata lacking x).
fz_err <- function(expr, pattern = NULL, label = NULL, allow = NULL)
  eval.parent(substitute(fuzz_case(expr, "error", pattern = pattern, label = label, allow = allow)))
fz_ok <- function(expr, check = fz_finite, label = NULL)
  eval.parent(substitute(fuzz_case(expr, "ok", check = check, label = label)))
fz_either <- function(expr, check = fz_finite, label = NULL)
  eval.parent(substitute(fuzz_case(expr, "error_or_ok", check = check, label = label)))

# Messages that are R's or C's internals speaking, not the package: a user
# cannot act on them.
fz_internal <- paste(c(
  "REAL\\(\\) can only be applied", "INTEGER\\(\\) can only be applied",
  "LOGICAL\\(\\) can only be applied", "VECTOR_ELT\\(\\) can only be applied",
  "subscript out of bounds", "internal error", "NA/NaN/Inf in foreign function call",
  "NA/NaN argument", "non-numeric argument to", "missing value where TRUE/FALSE needed",
  "argument is of length zero", "argument of length 0", "incorrect number of dimensions",
  "non-conformable", "\\$ operator is invalid for atomic vectors",
  "is not subsettable", "attempt to apply non-function", "invalid 'type' \\(",
  "negative length vectors", "cannot allocate vector", "number of items to replace",
  "replacement has", "arguments imply differing number of rows",
  "must be coercible to non-negative integer", "unimplemented type",
  "lapack|LAPACK|dpotrf|dpotri|dgesv|dsyev", "Error in \\.Call", "invalid argument to unary operator",
  "NAs are not allowed in subscripted assignments", "result would be too long a vector",
  "object '[^']*' not found", "could not find function"),
  collapse = "|")

fz_clear_message <- function(msg, origin = "", allow = NULL) {
  if (!nzchar(trimws(msg))) return("the error message is empty")
  if (!is.null(allow) && grepl(allow, msg)) return(NULL)
  # raised inside a vbayes function by its C code (or an R primitive), not by
  # stop(): the R boundary let the input through
  if (identical(origin, "vbayes"))
    return("the error was raised inside vbayes by C code or an R primitive, not by an argument check at the R boundary")
  if (grepl(fz_internal, msg)) return("the error message is an internal one, not a sentence for the user")
  if (nchar(msg) < 15L) return("the error message is too short to say what was wrong")
  NULL
}

# Default check: the numbers of a result (recursively) are all finite.
fz_numbers <- function(v) {
  if (is.data.frame(v)) v <- as.list(v)
  if (is.list(v)) return(unlist(lapply(v, fz_numbers), use.names = FALSE))
  if (is.numeric(v) || is.logical(v)) return(as.numeric(v))
  numeric(0)
}
fz_finite <- function(v, warnings = character(0)) {
  x <- fz_numbers(v)
  if (any(!is.finite(x))) return(sprintf("%d of %d numbers are NA, NaN or infinite", sum(!is.finite(x)), length(x)))
  TRUE
}
# A posterior: finite ELBO, means and covariance; not converged only with a warning.
fz_fit <- function(f, warnings = character(0)) {
  e <- f[["elbo"]]
  if (!is.numeric(e) || length(e) != 1L || !is.finite(e)) return(sprintf("the ELBO is %s", format(e)))
  cf <- f[["coefficients"]]
  if (!is.null(cf) && any(!is.finite(cf))) return("a coefficient is not finite")
  V <- f[["vcov"]]
  if (!is.null(V) && any(!is.finite(V))) return("the posterior covariance is not finite")
  if (!is.logical(f[["converged"]]) || length(f[["converged"]]) != 1L || is.na(f[["converged"]]))
    return("'converged' is not TRUE or FALSE")
  if (!isTRUE(f[["converged"]]) && length(warnings) == 0L)
    return("the fit did not converge and said nothing (no warning)")
  TRUE
}

# Called by an error's calling handler: the package whose function raised the
# error when it did not come from stop() (C code reached by .Call, or a
# primitive such as `[`), else "".  Both stop() and errors from C reach the
# handler through .handleSimpleError(); the frame below it tells them apart.
fz_error_origin <- function() {
  calls <- sys.calls()
  at <- which(vapply(calls, function(cl) identical(cl[[1L]], quote(.handleSimpleError)), logical(1)))
  if (!length(at) || max(at) < 2L) return("")
  k <- max(at) - 1L
  f <- sys.function(k)
  if (identical(f, base::stop) || identical(f, base::stopifnot)) return("")
  env <- environment(f)
  if (is.null(env)) return("")
  environmentName(topenv(env))
}

# Run one case inside the child: the value, or the error, with the warnings.
fz_run_one <- function(case, env) {
  warns <- character(0)
  origin <- ""
  set.seed(20261201)
  res <- tryCatch(
    withCallingHandlers(list(kind = "value", value = eval(case$expr, new.env(parent = env))),
                        warning = function(w) {
                          warns <<- c(warns, conditionMessage(w))
                          invokeRestart("muffleWarning")
                        },
                        message = function(m) invokeRestart("muffleMessage"),
                        error = function(e) origin <<- fz_error_origin()),
    error = function(e) list(kind = "error", message = conditionMessage(e)))
  out <- list(kind = res$kind, message = res$message, origin = origin, warnings = warns, check = NULL)
  if (res$kind == "value" && !is.null(case$check))
    out$check <- tryCatch({
      r <- case$check(res$value, warns)
      if (isTRUE(r)) TRUE else if (is.character(r)) r else "the result failed its check"
    }, error = function(e) paste("the check itself failed:", conditionMessage(e)))
  out
}

# Run every case in a child process of its own, `cores` at a time, each within
# `timeout` seconds.  Returns one outcome per case (NULL kind = crashed).
fz_run_all <- function(cases, env, cores = 2L, timeout = 120) {
  n <- length(cases)
  out <- vector("list", n)
  running <- list()   # pid (character) -> list(i, job, start)
  nexti <- 1L
  while (nexti <= n || length(running)) {
    while (nexti <= n && length(running) < cores) {
      job <- parallel::mcparallel(fz_run_one(cases[[nexti]], env), silent = TRUE)
      running[[as.character(job$pid)]] <- list(i = nexti, job = job, start = Sys.time())
      nexti <- nexti + 1L
    }
    got <- suppressWarnings(parallel::mccollect(lapply(running, `[[`, "job"), wait = FALSE, timeout = 0.2))
    for (pid in names(got)) {
      r <- running[[pid]]
      out[[r$i]] <- if (is.list(got[[pid]]) && !is.null(got[[pid]]$kind)) got[[pid]] else
        list(kind = "crash", message = "the child process died (a crash or a sanitizer abort)")
      running[[pid]] <- NULL
    }
    for (pid in names(running)) {
      r <- running[[pid]]
      if (as.numeric(difftime(Sys.time(), r$start, units = "secs")) > timeout) {
        tools::pskill(r$job$pid, tools::SIGKILL)
        suppressWarnings(parallel::mccollect(r$job, wait = TRUE))
        out[[r$i]] <- list(kind = "crash", message = sprintf("no answer within %g s (killed)", timeout))
        running[[pid]] <- NULL
      }
    }
  }
  out
}

# NULL when the outcome is what the case demands, else a sentence saying why not.
fz_verdict <- function(case, o) {
  if (o$kind == "crash") return(o$message)
  if (case$expect == "no_crash") return(NULL)
  if (o$kind == "error") {
    if (case$expect == "ok")
      return(sprintf("valid input was refused: %s", o$message))
    bad <- fz_clear_message(o$message, o$origin, case$allow)
    if (!is.null(bad)) return(sprintf("%s: \"%s\"", bad, o$message))
    if (!is.null(case$pattern) && !grepl(case$pattern, o$message))
      return(sprintf("the error does not say /%s/: \"%s\"", case$pattern, o$message))
    return(NULL)
  }
  if (case$expect == "error") {
    w <- if (length(o$warnings)) sprintf(" (warnings: %s)", paste(unique(o$warnings), collapse = " | ")) else ""
    return(paste0("invalid input was accepted: it returned a result instead of an error", w))
  }
  if (!is.null(o$check) && !isTRUE(o$check)) return(paste("the result is not sensible:", o$check))
  NULL
}

# ---- .Call mutation fuzzing ---------------------------------------------------
# Records the arguments of every .Call that vbayes makes while the calls in
# `workload` (a list of unevaluated calls) run in `env`, in a forked child: each vbayes function that calls .Call is replaced
# (in the child only) by a copy whose .Call records its arguments and then
# calls the real one.  Returns list(list(name = routine, args = list(...))).
fz_record_calls <- function(workload, env) {
  job <- parallel::mcparallel(silent = TRUE, {
    ns <- asNamespace("vbayes")
    rec <- new.env()
    rec$calls <- list()
    recorder <- new.env(parent = ns)
    recorder$.Call <- function(.NAME, ...) {
      rec$calls[[length(rec$calls) + 1L]] <- list(name = .NAME$name, args = list(...))
      base::.Call(.NAME, ...)
    }
    # copies of the functions live on the search path and, under testthat, in
    # a clone of the namespace on env's parent chain: replace those as well
    chain <- if ("package:vbayes" %in% search()) list(as.environment("package:vbayes")) else list()
    x <- env
    while (!identical(x, emptyenv()) && !identical(x, globalenv())) {
      chain[[length(chain) + 1L]] <- x
      x <- parent.env(x)
    }
    for (nm in ls(ns, all.names = TRUE)) {
      orig <- get(nm, envir = ns)
      if (is.function(orig) && !is.primitive(orig) && ".Call" %in% all.names(body(orig))) {
        f <- orig
        environment(f) <- recorder
        # some bindings (S3 generics registered elsewhere) cannot be replaced: skip them
        if (inherits(try(suppressMessages(suppressWarnings(utils::assignInNamespace(nm, f, "vbayes"))),
                         silent = TRUE), "try-error")) next
        for (x in chain) if (exists(nm, envir = x, inherits = FALSE) && identical(get(nm, envir = x), orig)) {
          if (bindingIsLocked(nm, x)) unlockBinding(nm, x)
          assign(nm, f, envir = x)
        }
      }
    }
    for (w in workload) try(suppressWarnings(eval(w, env)), silent = TRUE)
    rec$calls
  })
  r <- suppressWarnings(parallel::mccollect(job)[[1L]])
  if (is.list(r)) r else list()
}

# A value of the wrong length (or shape) for the same slot.
fz_shorter <- function(v) {
  if (is.matrix(v) && nrow(v) > 1L) return(v[-nrow(v), , drop = FALSE])
  if (is.matrix(v) && ncol(v) > 1L) return(v[, -ncol(v), drop = FALSE])
  if (length(v) > 1L) return(v[-length(v)])
  if (length(v) == 1L) return(v[0L])
  NULL
}
fz_wider <- function(v) if (is.matrix(v) && is.numeric(v)) cbind(v, 0) else c(v, v)

# Mutants of one recorded call: each argument, and each element of each
# list argument, replaced by NULL, a string, NA, a zero-length value, a
# shorter and a longer value, and (numeric slots) -1 and 1e10.
fz_mutants <- function(rc) {
  bad <- function(v) {
    out <- list("NULL" = NULL, string = "a", "NA" = NA_real_, empty = numeric(0),
                shorter = fz_shorter(v), longer = fz_wider(v))
    if (is.numeric(v)) out <- c(out, list(neg = -abs(v) - 1, huge = v * 0 + 1e10, int_na = NA_integer_))
    out
  }
  muts <- list()
  for (i in seq_along(rc$args)) {
    a <- rc$args[[i]]
    for (b in names(bad(a))) {
      args <- rc$args
      args[i] <- list(bad(a)[[b]])
      muts[[length(muts) + 1L]] <- list(label = sprintf("%s: arg %d -> %s", rc$name, i, b), args = args)
    }
    if (is.list(a) && !is.null(names(a))) {
      for (el in names(a)) {
        if (is.function(a[[el]])) next
        bv <- bad(a[[el]])
        for (b in names(bv)) {
          args <- rc$args
          args[[i]][el] <- list(bv[[b]])
          muts[[length(muts) + 1L]] <- list(label = sprintf("%s: arg %d $%s -> %s", rc$name, i, el, b), args = args)
        }
      }
    }
  }
  lapply(muts, function(m)
    list(expr = as.call(c(list(quote(.Call), call("[[", quote(routines), rc$name)), m$args)),
         expect = "no_crash", check = NULL, pattern = NULL, allow = NULL, label = m$label))
}
