#' Many fits at once, on any `future` backend
#'
#' Fits one model per unit — per level of `by` in `data`, or per element of a
#' list of data sets — with [future.apply::future_lapply()], so the fits run
#' wherever the user's [future::plan()] sends them (sequentially, on local
#' cores, on a cluster or an HPC scheduler). `vb_many()` never calls `plan()`
#' itself.
#'
#' * **Reproducible**: every unit gets its own L'Ecuyer-CMRG random-number
#'   stream (`future.seed = TRUE`), so a stochastic fit (`method = "sgvb"`,
#'   [vb_density()]) gives the same numbers under any plan and any number of
#'   workers after the same `set.seed()`.
#' * **Progress** is reported through \pkg{progressr}: wrap the call in
#'   `progressr::with_progress()` (or set `progressr::handlers(global = TRUE)`)
#'   and choose the handlers you like.
#' * **Failures are data**: a unit whose fit raises an error is recorded with
#'   its error message and does not stop the others. Warnings raised inside a
#'   unit's fit (for instance non-convergence) are recorded in the `units`
#'   table and summarised by one warning naming the units concerned.
#' * The C engines are single-threaded, so one worker runs one fit; use an
#'   optimised multi-threaded BLAS only with a sequential plan.
#'
#' @param formula A model formula for `fit`.
#' @param data A data frame with all units (then give `by`), or a list of data
#'   frames, one per unit (its names name the units).
#' @param by With a data frame: the unit each row belongs to — a column name,
#'   a one-sided formula such as `~ neuron`, or a vector with one value per row.
#' @param ... Further arguments of `fit` (for `vb()`: `family`, `prior`,
#'   `exposure`, `approx`, `control`, ...). Arguments naming columns of `data`
#'   (such as `weights = w`) are evaluated in each unit's data, as in `vb()`.
#' @param fit The fitting function, called as `fit(formula, data = <unit data>,
#'   ...)`: [vb()] by default.
#' @param keep_fits Keep every unit's fit in the result (`TRUE`), or only the
#'   summaries (`FALSE`, for very many units).
#' @return An object of class `vb_many`: `units`, a data frame with one row per
#'   unit (`unit`, `n` rows, `elbo`, `converged`, `iterations`, `time` in
#'   seconds, `warning`, `error`); `coefficients`, a units x terms matrix of
#'   posterior means (`NA` for failed units); `se`, the matching posterior sds;
#'   `fits`, the fits (named by unit; `NULL` for failed units or when
#'   `keep_fits = FALSE`); and `formula`, `call`.
#' @seealso [elbo_table()] for the units x models matrix that [bms()] takes.
#' @examples
#' set.seed(1)
#' d <- data.frame(unit = rep(c("a", "b", "c"), each = 60), x = rnorm(180))
#' d$y <- rpois(180, exp(0.5 + 0.4 * d$x))
#' m1 <- vb_many(y ~ x, d, by = "unit", family = poisson())
#' m0 <- vb_many(y ~ 1, d, by = "unit", family = poisson())
#' m1
#' elbo_table(null = m0, slope = m1)
#' @export
vb_many <- function(formula, data, by, ..., fit = vb, keep_fits = TRUE) {
  cl <- match.call()
  if (!is.function(fit))
    stop("vb_many(): 'fit' must be a fitting function such as vb.", call. = FALSE)
  if (!is.logical(keep_fits) || length(keep_fits) != 1L || is.na(keep_fits))
    stop("vb_many(): 'keep_fits' must be TRUE or FALSE.", call. = FALSE)
  units <- many_split(data, if (missing(by)) NULL else by, missing(by))
  formula <- many_formula(formula, units[[1L]])
  fit_name <- if (is.name(cl$fit)) as.character(cl$fit) else "vb"
  dots <- match.call(expand.dots = FALSE)$...
  args <- many_args(dots, units[[1L]], parent.frame())

  p <- progressr::progressor(steps = length(units))
  # one list, so that no symbol, call or formula in it is evaluated on the way
  spec <- list(formula = formula, fit = fit, args = args, keep = keep_fits, progress = p,
               record = as.call(c(list(as.name(fit_name), formula = formula, data = quote(unit_data)), dots)))
  res <- future.apply::future_lapply(units, many_unit, spec = spec, future.seed = TRUE,
                                     future.packages = "vbayes")
  names(res) <- names(units)
  many_result(res, formula, cl)
}

# Workers see the formula's environment only if it travels with the formula:
# the objects the formula names (a basis matrix in spike_history(spikes, B), say)
# are copied into a small environment of their own, child of the original.
many_formula <- function(formula, unit1) {
  if (!inherits(formula, "formula")) stop("vb_many(): 'formula' must be a model formula.", call. = FALSE)
  cols <- if (is.list(unit1)) names(unit1) else character(0)
  travelling(formula, setdiff(all.names(formula), cols))
}

# A function or formula with the objects it names (those found from its
# environment, base R's own aside) copied into a small environment of its
# own, child of the original: a global environment does not travel to a
# future's worker, an environment of its own does.
travelling <- function(x, names = all.names(if (is.function(x)) body(x) else x)) {
  env <- environment(x)
  if (is.null(env)) env <- globalenv()
  fenv <- new.env(parent = env)
  for (nm in unique(names))
    if (exists(nm, envir = env) && !exists(nm, envir = baseenv())) assign(nm, get(nm, envir = env), envir = fenv)
  environment(x) <- fenv
  x
}

# A data frame split by unit, or a list of data frames checked as one.
many_split <- function(data, by, no_by) {
  if (is.data.frame(data)) {
    if (no_by) stop("vb_many(): give 'by' (the unit of each row of 'data'), or pass a list of data frames, one per unit.",
                    call. = FALSE)
    if (inherits(by, "formula")) {
      if (length(by) != 2L || length(all.vars(by)) != 1L)
        stop("vb_many(): a formula 'by' must be one-sided with one variable, as in ~ neuron.", call. = FALSE)
      by <- all.vars(by)
    }
    if (is.character(by) && length(by) == 1L && nrow(data) != 1L) {
      if (!by %in% names(data))
        stop(sprintf("vb_many(): 'by' names the column '%s', which 'data' does not have.", by), call. = FALSE)
      by <- data[[by]]
    }
    if (!is.atomic(by) || length(by) != nrow(data))
      stop(sprintf("vb_many(): 'by' must be a column name, a one-sided formula or a vector with one value per row of 'data' (%d rows; got length %d).",
                   nrow(data), length(by)), call. = FALSE)
    if (anyNA(by))
      stop("vb_many(): 'by' has missing values; every row must belong to a unit.", call. = FALSE)
    units <- split(data, by, drop = TRUE)
    if (!length(units)) stop("vb_many(): 'data' has no rows.", call. = FALSE)
    return(lapply(units, function(u) { rownames(u) <- NULL; u }))
  }
  if (!no_by) stop("vb_many(): 'by' is for a data frame; with a list of data sets, each element is a unit.",
                   call. = FALSE)
  if (!is.list(data) || !length(data))
    stop("vb_many(): 'data' must be a data frame (with 'by') or a non-empty list of data frames.", call. = FALSE)
  ok <- vapply(data, function(u) is.data.frame(u) || is.environment(u) || is.list(u), logical(1))
  if (!all(ok))
    stop(sprintf("vb_many(): element(s) %s of 'data' are not data frames.", toString(which(!ok))), call. = FALSE)
  nm <- names(data)
  if (is.null(nm)) nm <- rep("", length(data))
  nm[nm == ""] <- as.character(seq_along(data))[nm == ""]
  if (anyDuplicated(nm)) stop("vb_many(): the units (names of 'data') must be distinct.", call. = FALSE)
  names(data) <- nm
  data
}

# The extra arguments: those that name columns of the unit data stay
# expressions (evaluated per unit by fit's own model frame, as lm() would);
# the rest are evaluated once, here, so workers need no caller environment.
many_args <- function(dots, unit1, env) {
  cols <- if (is.data.frame(unit1) || is.list(unit1)) names(unit1) else character(0)
  lapply(dots, function(e) {
    v <- all.vars(e)
    if ((is.name(e) || is.call(e)) && length(v) && all(v %in% cols)) e else eval(e, env)
  })
}

# One unit, in a worker: the fit with its warnings and error as data.
# `record` is the call as the user would write it for one unit, kept as the
# fit's call (the evaluated call holds the values, not the expressions).
many_unit <- function(unit_data, spec) {
  formula <- spec$formula
  warns <- character(0)
  t0 <- proc.time()[["elapsed"]]
  env <- list2env(list(FIT = spec$fit, formula = formula, unit_data = unit_data), parent = environment(formula))
  call <- as.call(c(list(as.name("FIT"), formula = as.name("formula"), data = as.name("unit_data")), spec$args))
  f <- tryCatch(withCallingHandlers(eval(call, env), warning = function(w) {
    warns <<- c(warns, conditionMessage(w))
    invokeRestart("muffleWarning")
  }), error = function(e) e)
  spec$progress()
  err <- if (inherits(f, "error")) conditionMessage(f) else NA_character_
  if (inherits(f, "error")) f <- NULL
  if (!is.null(f) && !is.null(f[["call"]])) f$call <- spec$record
  cf <- if (is.null(f)) NULL else tryCatch(stats::coef(f), error = function(e) NULL)
  se <- if (is.null(f)) NULL else tryCatch(sqrt(pmax(diag(as.matrix(stats::vcov(f))), 0)),
                                           error = function(e) NULL)
  list(fit = if (spec$keep) f else NULL, elbo = if (is.null(f)) NA_real_ else as.numeric(f[["elbo"]])[1L],
       converged = if (is.null(f)) NA else isTRUE(f[["converged"]]),
       iterations = if (is.null(f) || is.null(f[["iterations"]])) NA_integer_ else as.integer(f[["iterations"]])[1L],
       n = if (is.data.frame(unit_data)) nrow(unit_data) else NA_integer_,
       time = proc.time()[["elapsed"]] - t0, coef = cf, se = se,
       warning = if (length(warns)) paste(unique(warns), collapse = " | ") else NA_character_, error = err)
}

many_result <- function(res, formula, cl) {
  u <- names(res)
  pick <- function(f, type) vapply(res, function(r) r[[f]], type, USE.NAMES = FALSE)
  units <- data.frame(unit = u, n = pick("n", integer(1)), elbo = pick("elbo", numeric(1)),
                      converged = pick("converged", logical(1)), iterations = pick("iterations", integer(1)),
                      time = pick("time", numeric(1)), warning = pick("warning", character(1)),
                      error = pick("error", character(1)), stringsAsFactors = FALSE)
  terms <- unique(unlist(lapply(res, function(r) names(r$coef))))
  mat <- function(f) {
    m <- matrix(NA_real_, length(u), length(terms), dimnames = list(u, terms))
    for (i in seq_along(res)) {
      v <- res[[i]][[f]]
      if (length(v) && !is.null(names(v))) m[i, names(v)] <- v
    }
    m
  }
  out <- structure(list(units = units, coefficients = mat("coef"), se = mat("se"),
                        fits = lapply(res, `[[`, "fit"), formula = formula, call = cl),
                   class = "vb_many")
  failed <- !is.na(units$error)
  warned <- !is.na(units$warning)
  if (any(failed))
    warning(sprintf("vb_many(): %d of %d fits failed (%s): %s. See $units$error.", sum(failed), length(u),
                    many_list(u[failed]), sub("\\.$", "", units$error[failed][1L])), call. = FALSE)
  if (any(warned))
    warning(sprintf("vb_many(): the fits of %d of %d units warned (%s): %s. See $units$warning.", sum(warned),
                    length(u), many_list(u[warned]), sub("\\.$", "", units$warning[warned][1L])), call. = FALSE)
  out
}

many_list <- function(x, k = 5L) if (length(x) > k) paste0(toString(x[seq_len(k)]), ", ...") else toString(x)

#' @export
print.vb_many <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  u <- x$units
  cat(sprintf("%d fits of %s\n", nrow(u), paste(deparse(x$formula), collapse = " ")))
  cat(sprintf("converged: %d, not converged: %d, failed: %d\n", sum(u$converged %in% TRUE),
              sum(u$converged %in% FALSE), sum(!is.na(u$error))))
  ok <- is.finite(u$elbo)
  if (any(ok))
    cat(sprintf("ELBO: total %s, per unit from %s to %s\n", format(sum(u$elbo[ok]), digits = digits + 3L),
                format(min(u$elbo[ok]), digits = digits), format(max(u$elbo[ok]), digits = digits)))
  cat(sprintf("time: %s s in all fits\n", format(sum(u$time), digits = digits)))
  invisible(x)
}

#' @export
summary.vb_many <- function(object, ...) {
  cf <- object$coefficients
  tab <- data.frame(term = colnames(cf),
                    units = colSums(!is.na(cf)),
                    mean = colMeans(cf, na.rm = TRUE),
                    sd = apply(cf, 2L, stats::sd, na.rm = TRUE),
                    min = apply(cf, 2L, function(v) if (all(is.na(v))) NA else min(v, na.rm = TRUE)),
                    max = apply(cf, 2L, function(v) if (all(is.na(v))) NA else max(v, na.rm = TRUE)),
                    mean_posterior_sd = colMeans(object$se, na.rm = TRUE), row.names = NULL)
  structure(list(units = object$units, terms = tab, formula = object$formula), class = "summary.vb_many")
}

#' @export
print.summary.vb_many <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  u <- x$units
  cat(sprintf("%d fits of %s: %d converged, %d not converged, %d failed\n\n", nrow(u),
              paste(deparse(x$formula), collapse = " "), sum(u$converged %in% TRUE),
              sum(u$converged %in% FALSE), sum(!is.na(u$error))))
  cat("Posterior means across units:\n")
  tab <- x$terms
  num <- vapply(tab, is.double, logical(1))
  tab[num] <- lapply(tab[num], function(v) formatC(v, digits = digits, format = "f"))
  print(tab, row.names = FALSE, right = TRUE)
  bad <- u[!is.na(u$error) | !is.na(u$warning), c("unit", "warning", "error")]
  if (nrow(bad)) {
    cat("\nUnits with warnings or errors:\n")
    print(bad, row.names = FALSE)
  }
  invisible(x)
}

#' @export
coef.vb_many <- function(object, ...) object$coefficients

#' @export
elbo.vb_many <- function(object, ...) stats::setNames(object$units$elbo, object$units$unit)

#' @rdname vb_many
#' @param x A `vb_many` result.
#' @param conf.int,conf.level For `tidy()`: add `conf.low`, `conf.high`
#'   (normal intervals from the posterior means and sds, exact for Gaussian q).
#' @export
tidy.vb_many <- function(x, conf.int = FALSE, conf.level = 0.95, ...) {
  cf <- x$coefficients
  if (!length(cf))
    return(data.frame(unit = character(), term = character(), estimate = numeric(), std.error = numeric()))
  out <- data.frame(unit = rep(rownames(cf), ncol(cf)), term = rep(colnames(cf), each = nrow(cf)),
                    estimate = as.vector(cf), std.error = as.vector(x$se), stringsAsFactors = FALSE)
  if (isTRUE(conf.int)) {
    z <- stats::qnorm(1 - (1 - conf.level) / 2)
    out$conf.low <- out$estimate - z * out$std.error
    out$conf.high <- out$estimate + z * out$std.error
  }
  out <- out[!is.na(out$estimate), , drop = FALSE]
  rownames(out) <- NULL
  out
}

#' Plot many fits
#'
#' One coefficient across units (posterior means with 95% intervals from the
#' posterior sds, which are exact for the Gaussian q of [vb()] fits), or the
#' ELBO of every unit.
#'
#' @param x A [vb_many()] result.
#' @param what `"coef"` or `"elbo"`.
#' @param term With `"coef"`: the coefficient to show (default: the first
#'   that is not the intercept).
#' @param ... Passed to [graphics::plot()].
#' @return The plotted data, invisibly.
#' @export
plot.vb_many <- function(x, what = c("coef", "elbo"), term = NULL, ...) {
  what <- match.arg(what)
  u <- x$units$unit
  if (what == "elbo") {
    d <- data.frame(unit = u, elbo = x$units$elbo)
    graphics::plot(seq_along(u), d$elbo, xaxt = "n", xlab = "", ylab = "ELBO (nats)", pch = 19,
                   main = "ELBO per unit", ...)
    graphics::axis(1, seq_along(u), u, las = 2, cex.axis = 0.8)
    return(invisible(d))
  }
  terms <- colnames(x$coefficients)
  if (is.null(term)) term <- setdiff(terms, "(Intercept)")[1L]
  if (is.na(term) || !term %in% terms)
    stop(sprintf("plot.vb_many(): 'term' must be one of %s.", toString(terms)), call. = FALSE)
  d <- data.frame(unit = u, estimate = x$coefficients[, term], se = x$se[, term])
  d$lower <- d$estimate - 1.96 * d$se
  d$upper <- d$estimate + 1.96 * d$se
  ok <- is.finite(d$estimate)
  rng <- range(c(d$lower[ok], d$upper[ok]), finite = TRUE)
  graphics::plot(seq_along(u), d$estimate, ylim = rng, xaxt = "n", xlab = "", ylab = term, pch = 19,
                 main = sprintf("%s across units (posterior mean, 95%% interval)", term), ...)
  graphics::segments(seq_along(u), d$lower, seq_along(u), d$upper)
  graphics::abline(h = 0, lty = 3)
  graphics::axis(1, seq_along(u), u, las = 2, cex.axis = 0.8)
  invisible(d)
}

#' The units x models ELBO table of several [vb_many()] runs
#'
#' Puts the per-unit ELBOs of several models fitted to the same units side by
#' side: the subjects x models matrix of log evidences that [bms()] takes, so
#' population model comparison is `bms(elbo_table(m1, m2))`.
#'
#' Where the runs kept their fits, each unit's fits are checked to model the
#' same data (as [compare_models()] does), since evidences of different data
#' are not comparable.
#'
#' @param ... [vb_many()] results, one per model; their argument names name
#'   the models (otherwise the expressions do).
#' @param na What to do with units whose fit failed in some model:
#'   `"error"` (default) or `"drop"` those units.
#' @return A numeric matrix, units x models.
#' @examples
#' set.seed(1)
#' d <- data.frame(unit = rep(1:4, each = 50), x = rnorm(200))
#' d$y <- rpois(200, exp(0.3 * d$x))
#' tab <- elbo_table(null = vb_many(y ~ 1, d, by = "unit", family = poisson()),
#'                   slope = vb_many(y ~ x, d, by = "unit", family = poisson()))
#' tab
#' bms(tab)$exceedance
#' @export
elbo_table <- function(..., na = c("error", "drop")) {
  na <- match.arg(na)
  runs <- list(...)
  exprs <- vapply(as.list(substitute(list(...)))[-1L],
                  function(e) paste(deparse(e, width.cutoff = 60L), collapse = ""), character(1))
  nms <- names(runs)
  if (is.null(nms)) nms <- rep("", length(runs))
  nms[nms == ""] <- exprs[nms == ""]
  if (length(runs) < 2L) stop("elbo_table(): give at least two vb_many() results, one per model.", call. = FALSE)
  bad <- !vapply(runs, inherits, logical(1), "vb_many")
  if (any(bad)) stop(sprintf("elbo_table(): %s %s not a vb_many() result.", toString(nms[bad]),
                             if (sum(bad) == 1L) "is" else "are"), call. = FALSE)
  if (anyDuplicated(nms)) stop("elbo_table(): the models need distinct names, as in elbo_table(a = m1, b = m2).",
                               call. = FALSE)
  u <- runs[[1L]]$units$unit
  for (i in seq_along(runs)[-1L]) {
    ui <- runs[[i]]$units$unit
    if (!setequal(u, ui))
      stop(sprintf("elbo_table(): '%s' and '%s' were fitted to different units (%s); fit every model to the same units.",
                   nms[1L], nms[i], many_list(c(setdiff(u, ui), setdiff(ui, u)))), call. = FALSE)
  }
  tab <- vapply(runs, function(r) stats::setNames(r$units$elbo, r$units$unit)[u], numeric(length(u)))
  tab <- matrix(tab, length(u), length(runs), dimnames = list(u, nms))
  for (j in u) {
    fits <- lapply(runs, function(r) r$fits[[j]])
    if (all(!vapply(fits, is.null, logical(1)))) {
      names(fits) <- nms
      tryCatch(check_same_data(fits), error = function(e)
        stop(sprintf("elbo_table(): unit '%s': %s", j, sub("^compare_models\\(\\): ", "", conditionMessage(e))),
             call. = FALSE))
    }
  }
  miss <- !stats::complete.cases(tab) | !apply(is.finite(tab), 1L, all)
  if (any(miss)) {
    if (na == "error")
      stop(sprintf("elbo_table(): %d unit(s) have no finite ELBO in some model (%s: a failed fit); fix them or use na = \"drop\".",
                   sum(miss), many_list(u[miss])), call. = FALSE)
    tab <- tab[!miss, , drop = FALSE]
    if (!nrow(tab)) stop("elbo_table(): no unit has a finite ELBO in every model.", call. = FALSE)
  }
  tab
}
