#' Prior distributions
#'
#' Priors for the coefficients of [vb()] models and for the noise precision of
#' the gaussian family.  Priors must be proper: the evidence p(y), and so every
#' ELBO and every comparison of models by it, is undefined under an improper prior.
#'
#' * `normal(location, scale)`: density N(location, scale^2).
#' * `laplace(location, scale)`: density exp(-|x - location| / scale) / (2 scale),
#'   a sparsity prior (the Bayesian lasso).
#' * `gamma_prior(shape, rate)`: a Gamma(shape, rate) prior on the noise
#'   precision tau = 1/sigma^2 of a gaussian model (mean shape / rate).
#'
#' `location` and `scale` of a coefficient prior may be vectors, one value per
#' coefficient (the intercept excluded: it has `prior_intercept`), or length 1
#' to recycle.
#'
#' @section Explicit priors mean what they say:
#' A prior you give is used as written, on the columns of the design matrix as
#' [stats::model.matrix()] builds them: `prior = normal(0, 1)` puts a
#' N(0, 1) prior on every non-intercept coefficient, and
#' `prior_intercept = normal(0, 10)` a N(0, 100) prior on the coefficient of
#' the `(Intercept)` column, whatever the scales of the data.  With
#' `autoscale = TRUE` the scale is adjusted to the data by the rule below
#' (the location never is); an explicit `prior_intercept` is never centred.
#'
#' @section Default priors (autoscaled, as in rstanarm):
#' Leaving `prior`, `prior_intercept` or `prior_precision` of [vb()] out (or
#' at `NULL` in [vb_fit()]) gives weakly informative priors on the scale of the
#' data, following the rule of rstanarm (version 2.19 and later).  With
#' s_y = sd(y) for `gaussian()` and s_y = 1 for the other families, and
#' s_k = sd(x_k) the standard deviation of design column k (1 for a constant
#' column), all over the observations with positive weight (for `binomial()`
#' over the trials, each row counted `weights` times, so grouped and 0/1 data
#' of the same trials get the same prior; rstanarm counts rows):
#'
#' * coefficients: `normal(0, 2.5, autoscale = TRUE)`, so beta_k ~
#'   N(0, (2.5 s_y / s_k)^2) (the scale is floored at 1e-12, as in rstanarm);
#' * intercept: normal with location mean(y - offset) for `gaussian()`, 0
#'   otherwise, and scale 2.5 s_y, placed on the intercept *after centring
#'   the predictors*: on alpha = beta_0 + sum_k xbar_k beta_k, the linear
#'   predictor at the means xbar of the columns;
#' * noise precision (gaussian): `gamma_prior(1, 0.01, autoscale = TRUE)`,
#'   tau ~ Gamma(1, 0.01 s_y^2).  Its rate adds 0.01 var(y) to the half
#'   residual sum of squares in the posterior of tau, which is negligible
#'   unless the residual variance is below about 0.02 var(y) / n.  (rstanarm's
#'   default is exponential(1 / s_y) on sigma, which has no conjugate
#'   counterpart; the gamma prior on the precision keeps the gaussian updates
#'   exact.)
#'
#' Centring is a reparametrisation with unit Jacobian (X beta = alpha 1 +
#' (X - 1 xbar') beta), so the fit, its ELBO and its posterior are reported
#' for the coefficients of the design as built: `coef(fit)["(Intercept)"]` is
#' beta_0, not alpha.  The engines work on the centred design, so under
#' `approx = "meanfield"` or `"block"` the factorisation of q is that of
#' (alpha, beta) and the reported covariance of beta_0 with the slopes is not
#' zero.  Centring happens only for the default `prior_intercept`, and only
#' when the design has an `(Intercept)` column of ones.
#'
#' [prior_summary()], `print()` and `summary()` show the priors a fit used,
#' the adjusted scales included.
#'
#' @section Priors from rstanarm:
#' The prior objects of rstanarm are accepted with the same meaning:
#' `rstanarm::normal()` and `rstanarm::laplace()` (scale `NULL` meaning 2.5,
#' `autoscale` as given), so masking between the two packages is harmless.
#' Other rstanarm priors (`student_t()`, `cauchy()`, `hs()`, `hs_plus()`,
#' `lasso()`, `product_normal()`, ...) have no closed-form update in the
#' variational engines and are refused with an error.  rstanarm centres the
#' predictors for every `prior_intercept`; vbayes only for the default.
#'
#' @param location Prior location (mean, median).
#' @param scale Prior scale: the standard deviation for `normal`, the scale b
#'   (variance 2 b^2) for `laplace`. Finite and positive.
#' @param autoscale If `TRUE`, the scale (for `gamma_prior()`, the rate) is
#'   adjusted to the data by the rule of the default priors; `FALSE` (the
#'   default for a prior you write) uses it as given.
#' @param shape,rate Shape and rate of the gamma prior (mean shape / rate).
#' @return An object of class `vb_prior`.
#' @seealso [prior_summary()] for the priors a fit used.
#' @examples
#' normal(0, 2.5)
#' laplace(0, 0.5)
#' gamma_prior(1, 1)
#' # the default coefficient prior, as an explicit object
#' normal(0, 2.5, autoscale = TRUE)
#' fit <- vb(mpg ~ wt + hp, data = mtcars)
#' prior_summary(fit)
#' @name priors
NULL

#' @rdname priors
#' @export
normal <- function(location = 0, scale = 2.5, autoscale = FALSE) {
  new_prior("normal", location, scale, autoscale)
}

#' @rdname priors
#' @export
laplace <- function(location = 0, scale = 2.5, autoscale = FALSE) {
  new_prior("laplace", location, scale, autoscale)
}

#' @rdname priors
#' @export
gamma_prior <- function(shape = 1, rate = 1, autoscale = FALSE) {
  for (nm in c("shape", "rate")) {
    v <- get(nm)
    if (!is.numeric(v) || length(v) != 1L || !is.finite(v) || v <= 0)
      stop(sprintf("gamma_prior(): '%s' must be one finite positive number; an improper prior on the precision leaves the evidence undefined.", nm), call. = FALSE)
    if (!representable_scale(v))
      stop(sprintf("gamma_prior(): '%s' = %g is too extreme to compute with (its square or inverse square overflows); use a value between 1e-150 and 1e150.", nm, v), call. = FALSE)
  }
  check_flag(autoscale, "gamma_prior()", "autoscale")
  structure(list(dist = "gamma", shape = as.numeric(shape), rate = as.numeric(rate),
                 autoscale = autoscale), class = "vb_prior")
}

check_flag <- function(x, fn, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x))
    stop(sprintf("%s: '%s' must be TRUE or FALSE.", fn, arg), call. = FALSE)
}

new_prior <- function(dist, location, scale, autoscale = FALSE) {
  fn <- paste0(dist, "()")
  if (!is.numeric(location) || length(location) < 1L || any(!is.finite(location)))
    stop(fn, ": 'location' must be finite numbers.", call. = FALSE)
  if (!is.numeric(scale) || length(scale) < 1L || anyNA(scale))
    stop(fn, ": 'scale' must be numeric.", call. = FALSE)
  if (any(!is.finite(scale) | scale <= 0))
    stop(fn, ": 'scale' must be finite and positive. An infinite or non-positive scale is an ",
         "improper prior: the evidence p(y), and so the ELBO and any comparison by it, would be undefined.",
         call. = FALSE)
  if (!all(representable_scale(scale)))
    stop(fn, ": 'scale' is too extreme to compute with (its square or inverse square overflows ",
         "double precision); use scales between 1e-150 and 1e150.", call. = FALSE)
  if (!all(is.finite(location^2)))
    stop(fn, ": 'location' is too large to compute with (its square overflows double precision); ",
         "use locations of magnitude below 1e150.", call. = FALSE)
  check_flag(autoscale, fn, "autoscale")
  structure(list(dist = dist, location = as.numeric(location), scale = as.numeric(scale),
                 autoscale = autoscale), class = "vb_prior")
}

#' @export
print.vb_prior <- function(x, ...) {
  cat(format_prior(x), if (x$dist == "gamma") " on the noise precision", "\n", sep = "")
  invisible(x)
}

# "normal(location = 0, scale = 2.5, autoscale = TRUE)"; vectors in [ ].
format_prior <- function(x, digits = 4L, show_autoscale = TRUE) {
  num <- function(v) {
    s <- formatC(signif(v, digits), digits = digits, format = "g", flag = "-")
    s <- trimws(s)
    if (length(v) == 1L) s else paste0("[", paste(s, collapse = ", "), "]")
  }
  auto <- if (show_autoscale && isTRUE(x$autoscale)) ", autoscale = TRUE" else ""
  if (x$dist == "gamma")
    sprintf("gamma_prior(shape = %s, rate = %s%s)", num(x$shape), num(x$rate), auto)
  else sprintf("%s(location = %s, scale = %s%s)", x$dist, num(x$location), num(x$scale), auto)
}

# Scales the C core can square and invert (src/glm_model.c checks the same).
representable_scale <- function(b) is.finite(b^2) & b^2 > 0 & is.finite(1 / b^2)

# ---- turning arguments into priors -------------------------------------------

# The supported prior objects: a vbayes prior (re-validated: it may have been
# edited), an rstanarm normal()/laplace() list, or NULL (the default, returned
# as NULL).  `kinds` are the dists allowed for this argument.
as_vb_prior <- function(pr, arg, kinds = c("normal", "laplace")) {
  if (is.null(pr)) return(NULL)
  what <- if (identical(kinds, "gamma")) "gamma_prior(shape, rate)" else
    "normal(location, scale) or laplace(location, scale)"
  if (inherits(pr, "vb_prior")) {
    d <- pr[["dist"]]
    if (!is.character(d) || length(d) != 1L || !d %in% kinds)
      stop(sprintf("'%s' must be %s.", arg, what), call. = FALSE)
    auto <- pr[["autoscale"]]
    if (is.null(auto)) auto <- FALSE
    if (d == "gamma") return(gamma_prior(pr[["shape"]], pr[["rate"]], auto))
    return(new_prior(d, pr[["location"]], pr[["scale"]], auto))
  }
  if (is.list(pr) && is.character(pr[["dist"]]) && length(pr[["dist"]]) == 1L &&
      all(c("location", "scale") %in% names(pr))) {
    # an rstanarm prior: list(dist, df, location, scale, autoscale)
    d <- pr[["dist"]]
    if (d %in% kinds && d %in% c("normal", "laplace")) {
      loc <- pr[["location"]]
      if (is.null(loc)) loc <- 0
      if (is.numeric(loc) || is.logical(loc)) loc[is.na(loc)] <- 0
      sc <- pr[["scale"]]
      if (is.null(sc)) sc <- 2.5 # rstanarm's default scale
      return(new_prior(d, as.numeric(loc), sc, isTRUE(pr[["autoscale"]])))
    }
    name <- if (d == "t") "student_t() (or cauchy())" else paste0(d, "()")
    stop(sprintf("'%s': the rstanarm prior %s is not supported by vb(); the variational engines have closed forms for %s (from vbayes or rstanarm) only.",
                 arg, name, if (identical(kinds, "gamma")) "gamma_prior() on the noise precision" else "normal() and laplace()"),
         call. = FALSE)
  }
  stop(sprintf("'%s' must be %s%s.", arg, what,
               if (identical(kinds, "gamma")) "" else ", from vbayes or rstanarm (leave it out for the autoscaled default)"),
       call. = FALSE)
}

# Per-coefficient prior arrays for the C model, the priors taken exactly as
# given (no autoscaling, no centring): type code, location, scale.
prior_arrays <- function(cn, prior, prior_intercept) {
  prior <- as_vb_prior(prior, "prior")
  prior_intercept <- as_vb_prior(prior_intercept, "prior_intercept")
  if (is.null(prior)) prior <- normal()
  if (is.null(prior_intercept)) prior_intercept <- normal()
  expand_priors(cn, prior, prior_intercept, 1, 1)
}

expand_priors <- function(cn, prior, prior_intercept, coef_mult, int_mult) {
  p <- length(cn)
  is_int <- cn == "(Intercept)"
  k <- sum(!is_int)
  expand <- function(v, what) {
    if (length(v) == 1L) return(rep(v, k))
    if (length(v) == k) return(v)
    stop(sprintf("'prior' %s has length %d but the model has %d non-intercept coefficients; give one value or one per coefficient.",
                 what, length(v), k), call. = FALSE)
  }
  type <- integer(p); loc <- numeric(p); scale <- numeric(p)
  code <- function(pr) if (pr$dist == "normal") 0L else 1L
  type[!is_int] <- code(prior)
  loc[!is_int] <- expand(prior$location, "location")
  scale[!is_int] <- expand(prior$scale, "scale") * coef_mult
  if (any(is_int)) {
    if (length(prior_intercept$location) != 1L || length(prior_intercept$scale) != 1L)
      stop("'prior_intercept' must have a single location and scale.", call. = FALSE)
    type[is_int] <- code(prior_intercept)
    loc[is_int] <- prior_intercept$location
    scale[is_int] <- prior_intercept$scale * int_mult
  }
  list(type = type, location = loc, scale = scale)
}

# The priors a fit uses: the C arrays (in the coordinates the engine works
# in: centred when `centre` is not NULL), the adjusted gamma prior, and what
# was specified, for prior_summary().  X, y, weights, offset as checked by
# check_glm_data(); see ?priors for the rule.  `scan`: check_glm_data()'s
# scan of these data (made here when not given).
resolve_priors <- function(X, y, weights, offset, family, prior, prior_intercept, prior_precision,
                           scan = NULL) {
  pr <- as_vb_prior(prior, "prior")
  pint <- as_vb_prior(prior_intercept, "prior_intercept")
  pp <- as_vb_prior(prior_precision, "prior_precision", "gamma")
  gauss <- family$family == "gaussian"
  cn <- colnames(X)
  # the moments come from check_glm_data()'s C passes (binomial: over the
  # trials, so grouped and 0/1 data of the same trials get one prior)
  if (is.null(scan)) scan <- check_glm_data(X, y, family, weights, offset, NULL)$scan
  ys <- scan$ystats
  anypos <- ys[["npos"]] > 0
  sdy <- if (gauss) ys[["sd_y"]] else 1
  loc_y <- if (gauss) ys[["mean_yoff"]] else 0
  if (!is.finite(sdy) || sdy <= 0) sdy <- 1 # a constant response: as rstanarm without y
  default <- c(prior = is.null(pr), prior_intercept = is.null(pint), prior_precision = is.null(pp))
  if (is.null(pr)) pr <- normal(0, 2.5, autoscale = TRUE)
  if (is.null(pint)) pint <- normal(loc_y, 2.5, autoscale = TRUE)
  if (is.null(pp)) pp <- gamma_prior(1, 0.01, autoscale = TRUE)
  is_int <- cn == "(Intercept)"
  sdx <- rep(1, length(cn))
  if (isTRUE(pr$autoscale) && length(cn)) {
    sdx <- scan$sd
    sdx[scan$const] <- 1
    sdx[!is.finite(sdx) | sdx <= 0] <- 1
  }
  coef_mult <- if (isTRUE(pr$autoscale)) sdy / sdx[!is_int] else 1
  int_mult <- if (isTRUE(pint$autoscale)) sdy else 1
  pa <- expand_priors(cn, pr, pint, 1, int_mult)
  if (isTRUE(pr$autoscale)) {
    pa$scale[!is_int] <- pmax(1e-12, pa$scale[!is_int] * coef_mult)
    if (!all(representable_scale(pa$scale)))
      stop("vb(): the autoscaled prior scales are too extreme to compute with (a predictor or the response has a standard deviation beyond 1e150 or below 1e-150); rescale the data or give the priors explicitly.", call. = FALSE)
  }
  prec <- pp
  if (isTRUE(pp$autoscale)) {
    prec$rate <- pp$rate * sdy^2
    if (!representable_scale(prec$rate))
      stop("vb(): the autoscaled rate of 'prior_precision' is too extreme to compute with; rescale the response or give gamma_prior(shape, rate) explicitly.", call. = FALSE)
  }
  prec$autoscale <- FALSE
  # centre the predictors for the default intercept prior only
  int <- which(is_int)
  centre <- NULL
  if (default[["prior_intercept"]] && length(int) == 1L && length(cn) > 1L &&
      isTRUE(scan$ones[int]) && anypos) {
    centre <- scan$mean
    names(centre) <- cn
    centre[int] <- 0
    if (all(centre == 0)) centre <- NULL
  }
  list(coef = pa, precision = prec, centre = centre,
       specified = list(prior = pr, prior_intercept = pint, prior_precision = pp),
       default = default, sd_y = sdy, sd_x = setNames(sdx, cn), gaussian = gauss,
       has_intercept = length(int) == 1L)
}

# ---- centring: alpha = beta_0 + centre' beta ------------------------------------

# The design the engine sees.
centre_design <- function(X, centre) {
  if (is.null(centre)) return(X)
  .Call(C_centre_design, X, as.double(centre)) # one pass, no temporaries
}

# A = T^{-1}: raw coordinates from centred ones, beta = A theta_c; d >= p
# extends it by the identity (log tau of the SGVB q).
uncentre_matrix <- function(centre, d = length(centre)) {
  A <- diag(d)
  int <- which(names(centre) == "(Intercept)")
  A[int, seq_along(centre)] <- A[int, seq_along(centre)] - centre
  A[int, int] <- 1
  A
}

#' Priors used by a fit
#'
#' The priors of every parameter as the fit used them: what was specified (or
#' the defaults), and the scales after autoscaling (see [priors]), like
#' rstanarm's `prior_summary()`.  vbayes exports its own generic and
#' registers the method for `rstantools::prior_summary()` as well, so it
#' works whether or not rstanarm or rstantools is attached.
#'
#' @param object A fit from [vb()] or [vb_fit()].
#' @param ... Unused.
#' @return An object of class `vb_prior_summary`: a list with the specified
#'   priors (`prior`, `prior_intercept`, `prior_precision`), `defaults` (which
#'   were the defaults), `centred` (whether the intercept prior applies to the
#'   centred predictors, with the column means in `centre`), `precision` (the
#'   gamma prior used, after autoscaling) and `table`, one row per
#'   coefficient: `term`, `dist`, `location`, `scale` (as used) and
#'   `specified_scale`.
#' @examples
#' fit <- vb(mpg ~ wt + am, data = mtcars)
#' prior_summary(fit)
#' prior_summary(fit)$table
#' @export
prior_summary <- function(object, ...) UseMethod("prior_summary")

#' @rdname prior_summary
#' @export
prior_summary.default <- function(object, ...) {
  stop(sprintf("prior_summary(): expected a fit from vb() or vb_fit(), not an object of class '%s'.",
               class(object)[1L]), call. = FALSE)
}

#' @rdname prior_summary
#' @export
#' @rawNamespace S3method(rstantools::prior_summary, vbfit)
prior_summary.vbfit <- function(object, ...) {
  pr <- object[["prior"]]
  pa <- pr$coef
  cn <- names(object[["coefficients"]])
  sp <- pr$specified
  if (is.null(sp)) # a fit without the record (an older object): what the arrays say
    sp <- list(prior = NULL, prior_intercept = NULL, prior_precision = pr$precision)
  is_int <- cn == "(Intercept)"
  spec_scale <- rep(NA_real_, length(cn))
  if (!is.null(sp$prior)) spec_scale[!is_int] <- rep_len(sp$prior$scale, sum(!is_int))
  if (!is.null(sp$prior_intercept) && any(is_int)) spec_scale[is_int] <- sp$prior_intercept$scale
  tab <- data.frame(term = cn, dist = c("normal", "laplace")[pa$type + 1L], location = pa$location,
                    scale = pa$scale, specified_scale = spec_scale, stringsAsFactors = FALSE)
  gauss <- identical(object[["family"]]$family, "gaussian")
  structure(list(prior = sp$prior, prior_intercept = if (any(is_int)) sp$prior_intercept,
                 prior_precision = if (gauss) sp$prior_precision,
                 precision = if (gauss) pr$precision, defaults = pr$default,
                 centred = !is.null(pr$centre), centre = pr$centre[!is_int],
                 sd_y = pr$sd_y, table = tab),
            class = "vb_prior_summary")
}

#' @export
print.vb_prior_summary <- function(x, digits = 3L, ...) {
  cat("Priors used by the fit\n")
  tab <- x$table
  adj <- function(rows) {
    r <- tab[rows, , drop = FALSE]
    d <- unique(r$dist)
    if (length(d) != 1L) d <- "mixed"
    sprintf("%s(location = %s, scale = %s)", d, fmt_vec(r$location, digits), fmt_vec(r$scale, digits))
  }
  is_int <- tab$term == "(Intercept)"
  line <- function(label, spec, rows, default) {
    cat("\n", label, if (isTRUE(default)) " (default)", "\n", sep = "")
    if (!is.null(spec)) cat("  Specified: ", format_prior(spec, digits), "\n", sep = "")
    if (is.null(spec) || isTRUE(spec$autoscale)) cat("  Adjusted:  ", adj(rows), "\n", sep = "")
  }
  if (any(is_int))
    line(if (isTRUE(x$centred)) "Intercept (after predictors centred)" else "Intercept",
         x$prior_intercept, which(is_int), x$defaults[["prior_intercept"]])
  if (any(!is_int)) line("Coefficients", x$prior, which(!is_int), x$defaults[["prior"]])
  if (!is.null(x$precision)) {
    cat("\nNoise precision 1/sigma^2", if (isTRUE(x$defaults[["prior_precision"]])) " (default)", "\n", sep = "")
    if (!is.null(x$prior_precision))
      cat("  Specified: ", format_prior(x$prior_precision, digits), "\n", sep = "")
    if (is.null(x$prior_precision) || isTRUE(x$prior_precision$autoscale))
      cat("  Adjusted:  ", format_prior(x$precision, digits), "\n", sep = "")
  }
  if (isTRUE(x$centred) || any(tab$scale != tab$specified_scale, na.rm = TRUE) ||
      isTRUE(x$prior_precision$autoscale))
    cat("\nSee ?priors for the autoscaling rule (sd(y) = ", format(signif(x$sd_y, digits)),
        ") and the centring of the default intercept.\n", sep = "")
  invisible(x)
}

fmt_vec <- function(v, digits = 3L) {
  s <- trimws(formatC(signif(v, digits), digits = digits, format = "g", flag = "-"))
  if (length(s) == 1L) s else paste0("[", paste(s, collapse = ", "), "]")
}
