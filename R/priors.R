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
#'   precision 1/sigma^2 of a gaussian model.
#'
#' `location` and `scale` may be vectors, one value per coefficient (the
#' intercept excluded: it has `prior_intercept`), or length 1 to recycle.
#'
#' @param location Prior location (mean, median).
#' @param scale Prior scale: the standard deviation for `normal`, the scale b
#'   (variance 2 b^2) for `laplace`. Finite and positive.
#' @param shape,rate Shape and rate of the gamma prior (mean shape / rate).
#' @return An object of class `vb_prior`.
#' @examples
#' normal(0, 2.5)
#' laplace(0, 0.5)
#' gamma_prior(1, 1)
#' @name priors
NULL

#' @rdname priors
#' @export
normal <- function(location = 0, scale = 1) {
  new_prior("normal", location, scale)
}

#' @rdname priors
#' @export
laplace <- function(location = 0, scale = 1) {
  new_prior("laplace", location, scale)
}

#' @rdname priors
#' @export
gamma_prior <- function(shape = 1, rate = 1) {
  for (nm in c("shape", "rate")) {
    v <- get(nm)
    if (!is.numeric(v) || length(v) != 1L || !is.finite(v) || v <= 0)
      stop(sprintf("gamma_prior(): '%s' must be one finite positive number; an improper prior on the precision leaves the evidence undefined.", nm), call. = FALSE)
    if (!representable_scale(v))
      stop(sprintf("gamma_prior(): '%s' = %g is too extreme to compute with (its square or inverse square overflows); use a value between 1e-150 and 1e150.", nm, v), call. = FALSE)
  }
  structure(list(dist = "gamma", shape = shape, rate = rate), class = "vb_prior")
}

new_prior <- function(dist, location, scale) {
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
  structure(list(dist = dist, location = as.numeric(location), scale = as.numeric(scale)),
            class = "vb_prior")
}

#' @export
print.vb_prior <- function(x, ...) {
  if (x$dist == "gamma") {
    cat(sprintf("gamma_prior(shape = %g, rate = %g) on the noise precision\n", x$shape, x$rate))
  } else {
    cat(sprintf("%s(location = %s, scale = %s)\n", x$dist,
                paste(format(x$location), collapse = ", "), paste(format(x$scale), collapse = ", ")))
  }
  invisible(x)
}

# Scales the C core can square and invert (src/glm_model.c checks the same).
representable_scale <- function(b) is.finite(b^2) & b^2 > 0 & is.finite(1 / b^2)

# Per-coefficient prior arrays for the C model: type code, location, scale.
prior_arrays <- function(cn, prior, prior_intercept) {
  check_prior(prior, "prior")
  check_prior(prior_intercept, "prior_intercept")
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
  scale[!is_int] <- expand(prior$scale, "scale")
  if (any(is_int)) {
    if (length(prior_intercept$location) != 1L || length(prior_intercept$scale) != 1L)
      stop("'prior_intercept' must have a single location and scale.", call. = FALSE)
    type[is_int] <- code(prior_intercept)
    loc[is_int] <- prior_intercept$location
    scale[is_int] <- prior_intercept$scale
  }
  list(type = type, location = loc, scale = scale)
}

check_prior <- function(pr, arg) {
  if (!inherits(pr, "vb_prior") || !identical(pr[["dist"]], "normal") && !identical(pr[["dist"]], "laplace"))
    stop(sprintf("'%s' must be normal(location, scale) or laplace(location, scale).", arg), call. = FALSE)
  # re-validate: the object may have been edited after construction
  new_prior(pr[["dist"]], pr[["location"]], pr[["scale"]])
  invisible(pr)
}
