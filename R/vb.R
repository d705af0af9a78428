#' Variational Bayesian generalised linear models
#'
#' Fits a Bayesian GLM by variational Bayes: a Gaussian approximate posterior
#' q(beta) = N(mu, Sigma) (and, for `gaussian()`, q(tau) = Gamma for the noise
#' precision) chosen to maximise the evidence lower bound
#' ELBO = E_q log p(y | beta) - KL(q || prior), a lower bound on log p(y).
#'
#' The interface follows [stats::glm()]: `data`, `subset`, `weights`,
#' `na.action`, `offset` (argument or `offset()` terms), factors and
#' interactions all behave as there.
#'
#' * `gaussian()` (identity link): y ~ N(X beta, 1/(tau w)), tau ~
#'   `prior_precision`; q(beta) q(tau) by CAVI, each update exact.
#' * `poisson()` (log link): y ~ Poisson(exposure * exp(X beta)); the ELBO is
#'   in closed form since E_q exp(x'beta) = exp(x'mu + x'Sigma x / 2).
#' * `binomial()` (logit link): y as 0/1, a factor, proportions with `weights`
#'   (trials), or `cbind(successes, failures)`.
#'
#' The fixed-point Newton update Sigma^-1 = X'WX + S0^-1 is damped by step
#' halving so the ELBO never decreases.  `approx` chooses the family of q:
#' `"fullrank"` (dense Sigma), `"block"` (block-diagonal, one block per
#' formula term unless `vb_control(blocks = )` says otherwise) or `"meanfield"`
#' (diagonal; coordinate updates costing O(n) each).
#'
#' @param formula A model formula, as for [stats::glm()].
#' @param data A data frame (or environment) holding the variables.
#' @param family `gaussian()`, `poisson()` or `binomial()` (a family object,
#'   function or name).
#' @param prior Prior for the non-intercept coefficients: [normal()] or
#'   [laplace()] (rstanarm's `normal()` and `laplace()` are accepted too);
#'   location and scale may be vectors, one per coefficient.  Left out, it
#'   is `normal(0, 2.5, autoscale = TRUE)`: scale 2.5 sd(y) / sd(x)
#'   for gaussian, 2.5 / sd(x) otherwise (see [priors]).  An explicit prior
#'   applies to the model-matrix columns exactly as given.
#' @param prior_intercept Prior for the coefficient of the `(Intercept)`
#'   column, exactly as given.  Left out, it is the autoscaled
#'   default on the intercept *after centring the predictors*: normal with
#'   location mean(y) and scale 2.5 sd(y) for gaussian, location 0 and scale
#'   2.5 otherwise (see [priors]).
#' @param prior_precision [gamma_prior()] on the noise precision 1/sigma^2
#'   (gaussian only).  Left out, it is
#'   `gamma_prior(1, 0.01, autoscale = TRUE)`, a Gamma(1, 0.01 var(y)) prior.
#'   `NULL`, rstanarm's flat prior, is an error for each of the three: the
#'   evidence, and so the ELBO, needs proper priors.
#' @param approx Variational family: `"fullrank"`, `"block"` or `"meanfield"`;
#'   with random effects also `"partial"` (the default there; see [vb_glmm_details]).
#' @param prior_covariance Random effects only: [huang_wand()] (default) or
#'   [inv_wishart()], the prior of each term's covariance matrix.
#' @param method `"cavi"` (coordinate ascent; deterministic) or `"sgvb"`
#'   (stochastic gradients).
#' @param exposure Poisson only: the bin width or exposure time Delta, so that
#'   y ~ Poisson(Delta exp(x'beta)); a positive number (recycled) or a variable
#'   in `data`.  Equivalent to `offset(log(Delta))`.
#' @param weights,subset,na.action,offset As in [stats::glm()].
#' @param control A [vb_control()] list, or a plain named list of its
#'   arguments (as `glm()` accepts `control = list(maxit = 50)`).
#' @param x,y For `vb()`: return the design matrix / response in the fit.
#' @param contrasts Optional contrasts for factors, as in [stats::model.matrix()].
#' @return An object of class `c("vbfit", "vb_posterior")`: `coefficients`
#'   (posterior means), `vcov` (posterior covariance), `elbo`, `elbo_trace`,
#'   `elbo_terms` (expected log-likelihood and KL), `converged`, `status`,
#'   `iterations`, `time`, and
#'   the fields of a `glm` fit (`fitted.values`, `residuals`, `terms`, ...).
#'   `fitted.values` are posterior means of the mean response;
#'   `linear.predictors` the posterior means of the linear predictor.  For
#'   non-gaussian families, `linear.predictors.var`: the posterior variances
#'   of the linear predictor, which the CAVI engine needs anyway; gaussian
#'   fits compute them on demand, as `predict(se.fit = TRUE)` does
#'   (`linear.predictors.var` is `NULL`), and carry `ewrss`, the expected
#'   weighted residual sum of squares
#'   \eqn{E_q \sum_t w_t (y_t - x_t'\beta - o_t)^2 = \sum_t w_t (y_t - m_t)^2 +
#'   \mathrm{tr}(X'WX\Sigma)}{E_q sum w (y - x'b - offset)^2 = sum w (y - m)^2 + tr(X'WX Sigma)},
#'   which `deviance()` returns.
#'
#'   `converged` is `TRUE` only when the relative change of the ELBO and the
#'   gain a full Newton step still predicts were both within `tol`, in a sweep
#'   where every step was accepted and the ELBO was finite and did not
#'   decrease; a fullrank Poisson or binomial fit also stops, at the q of its
#'   last sweep, when that sweep was a full step whose gain the quadratic
#'   model predicted (within a factor 2) and the gain a further step predicts
#'   (or an upper bound on it) is within `tol`. Otherwise `status` says why the fit stopped (`1` iteration
#'   limit, `2` no step increased the ELBO, `3` a precision matrix was not
#'   positive definite, `4` the ELBO was not finite, `5` it decreased) and
#'   `vb()` warns, whatever `quiet` is.
#' @seealso [priors], [prior_summary()], [summary.vbfit()], [predict.vbfit()],
#'   [residuals.vbfit()], [elbo()], [draws()].
#' @examples
#' set.seed(1)
#' d <- data.frame(x = rnorm(200))
#' d$y <- rpois(200, 0.01 * exp(3 + 0.5 * d$x))
#' fit <- vb(y ~ x, data = d, family = poisson(), exposure = 0.01)
#' fit
#' elbo(fit)
#' @export
vb <- function(formula, data, family = gaussian(), prior, prior_intercept, prior_precision,
               approx = c("fullrank", "block", "meanfield"), method = c("cavi", "sgvb"),
               exposure = NULL, weights, subset, na.action, offset,
               control = vb_control(), x = TRUE, y = TRUE, contrasts = NULL,
               prior_covariance = huang_wand()) {
  cl <- match.call()
  left_out <- c(prior = missing(prior), prior_intercept = missing(prior_intercept))
  # left out: the autoscaled defaults (?priors); NULL is rstanarm's flat prior
  for (nm in c("prior", "prior_intercept", "prior_precision")) {
    if (eval(call("missing", as.name(nm)))) assign(nm, NULL)
    else if (is.null(get(nm)))
      stop(sprintf("vb(): '%s' is NULL. In rstanarm that is a flat prior, which leaves the evidence (and so the ELBO) undefined; give a proper prior, or leave '%s' out for the autoscaled default (see ?priors).",
                   nm, nm), call. = FALSE)
  }
  # random effects (lme4 bars): the hierarchical front end in glmm.R
  if (inherits(formula, "formula") && has_bars(formula))
    return(vb_glmm(cl, formula, if (missing(data)) environment(formula) else data, family, prior,
                   prior_intercept, prior_precision, prior_covariance,
                   if (missing(approx)) NULL else approx, control, x, y, contrasts,
                   left_out[["prior"]], left_out[["prior_intercept"]], parent.frame()))
  family <- check_family(family)
  approx <- match.arg(approx)
  method <- match.arg(method)
  control <- as_vb_control(control)
  if (missing(data)) data <- environment(formula)
  if (inherits(data, "vb_chunks")) return(vb_chunked(cl, formula, data, family, prior, prior_intercept,
                                                     prior_precision, approx, method, control, contrasts,
                                                     parent.frame()))

  # the model frame, as glm() builds it; a scalar exposure is recycled later
  mf <- match.call(expand.dots = FALSE)
  m <- match(c("formula", "data", "subset", "weights", "na.action", "offset", "exposure"),
             names(mf), 0L)
  mf <- mf[c(1L, m)]
  mf$drop.unused.levels <- TRUE
  mf[[1L]] <- quote(stats::model.frame)
  if (missing(na.action) && !is.null(qna <- default_na_action(data))) mf$na.action <- qna
  expo_scalar <- NULL
  if (!is.null(mf$exposure)) {
    ev <- eval(mf$exposure, data, parent.frame())
    if (length(ev) == 1L) {
      expo_scalar <- ev
      mf$exposure <- NULL
    }
  }
  mf <- eval(mf, parent.frame())
  mt <- attr(mf, "terms")
  if (nrow(mf) == 0L) stop("vb(): the model frame has no rows (after subset and na.action).", call. = FALSE)

  yr <- model.response(mf, "any")
  if (is.null(yr)) stop("vb(): the formula has no response.", call. = FALSE)
  X <- if (!is.empty.model(mt)) model.matrix(mt, mf, contrasts) else matrix(numeric(0), nrow(mf), 0L)
  n <- nrow(X)
  ex <- frame_extras(mf, family, n, expo_scalar)
  w <- ex$w; off <- ex$off; expo <- ex$expo
  resp <- family_response(yr, w, family, n)

  fit <- vb_fit(X, resp$y, family = family, weights = resp$weights,
                offset = off, exposure = expo, prior = prior,
                prior_intercept = prior_intercept, prior_precision = prior_precision,
                approx = approx, method = method, control = control,
                assign = attr(X, "assign"))
  fit$call <- cl
  fit$formula <- formula(mt)
  fit$terms <- mt
  fit$model <- mf
  fit$xlevels <- .getXlevels(mt, mf)
  fit$contrasts <- attr(X, "contrasts")
  fit$na.action <- attr(mf, "na.action")
  fit$response <- yr
  if (!x) fit[["x"]] <- NULL
  if (!y) fit[["y"]] <- NULL
  fit
}

# model.frame()'s na.action when vb() is given none: the "na.action" option
# when it is na.omit, na.exclude or na.fail, which return a frame without NA
# unchanged -- but here without na.omit's copy of every column (1.5 ms of a
# 3 ms fit at 10^4 x 10).  NULL (model.frame()'s own rule) otherwise.
default_na_action <- function(data) {
  if (!is.null(attr(data, "na.action"))) return(NULL)
  naa <- getOption("na.action")
  fun <- if (is.character(naa) && length(naa) == 1L) get0(naa, envir = asNamespace("stats"), mode = "function")
         else naa
  if (!(identical(fun, stats::na.omit) || identical(fun, stats::na.exclude) || identical(fun, stats::na.fail)))
    return(NULL)
  function(object, ...) if (anyNA(object)) fun(object, ...) else object
}

check_family <- function(family) {
  if (is.character(family)) family <- get(family, mode = "function", envir = parent.frame(2))
  if (is.function(family)) family <- family()
  if (!inherits(family, "family"))
    stop("vb(): 'family' must be a family object such as poisson().", call. = FALSE)
  ok <- list(gaussian = "identity", poisson = "log", binomial = "logit")
  if (!family$family %in% names(ok) || ok[[family$family]] != family$link)
    stop(sprintf("vb(): the %s family with the %s link is not supported; vb() supports gaussian(link = \"identity\"), poisson(link = \"log\") and binomial(link = \"logit\").",
                 family$family, family$link), call. = FALSE)
  family
}

# Turn the model response into (y, weights) on the scale the C core uses:
# binomial y = successes with weights = trials; others y with prior weights.
family_response <- function(yr, w, family, n) {
  fam <- family$family
  if (fam == "binomial") {
    if (is.factor(yr)) yr <- as.numeric(yr != levels(yr)[1L])
    if (is.logical(yr)) yr <- as.numeric(yr)
    if (is.matrix(yr)) {
      if (ncol(yr) != 2L || !is.numeric(yr))
        stop("vb(): a binomial matrix response must be cbind(successes, failures).", call. = FALSE)
      if (any(!is.finite(yr))) stop("vb(): the response contains NA or infinite values.", call. = FALSE)
      if (any(yr < 0) || any(yr != round(yr)))
        stop("vb(): cbind(successes, failures) needs non-negative whole counts.", call. = FALSE)
      trials <- rowSums(yr)
      if (!is.null(w)) trials <- trials * w
      return(list(y = yr[, 1] * (if (is.null(w)) 1 else w), weights = trials))
    }
    if (!is.numeric(yr)) stop("vb(): the binomial response must be numeric, logical, a factor or cbind(successes, failures).", call. = FALSE)
    if (any(!is.finite(yr))) stop("vb(): the response contains NA or infinite values.", call. = FALSE)
    if (is.null(w)) {
      if (any(yr != 0 & yr != 1))
        stop("vb(): a binomial response without weights must be 0/1 (or a factor); give proportions with 'weights' = trials, or cbind(successes, failures).", call. = FALSE)
      return(list(y = as.numeric(yr), weights = rep(1, n)))
    }
    if (any(yr < 0 | yr > 1))
      stop("vb(): with 'weights', a binomial response must be a proportion in [0, 1]; successes cannot exceed trials.", call. = FALSE)
    s <- yr * w
    if (any(abs(s - round(s)) > 1e-8))
      stop("vb(): proportion * weights must be whole numbers of successes.", call. = FALSE)
    return(list(y = round(s), weights = w))
  }
  if (is.matrix(yr) && ncol(yr) > 1L) stop("vb(): the response must be a vector for this family.", call. = FALSE)
  if (!is.numeric(yr) || is.factor(yr)) stop("vb(): the response must be numeric.", call. = FALSE)
  # drop names and dim: as.vector() would first expand the row names that
  # model.response() attaches (about 1 ms per 10^4 rows), attributes<- does not
  if (!is.null(attributes(yr))) attributes(yr) <- NULL
  if (any(!is.finite(yr))) stop("vb(): the response contains NA, NaN or infinite values.", call. = FALSE)
  if (fam == "poisson" && (any(yr < 0) || any(yr != round(yr))))
    stop("vb(): a poisson response must be non-negative whole counts.", call. = FALSE)
  list(y = yr, weights = if (is.null(w)) rep(1, n) else w)
}

# Weights, offset and exposure of a model frame, checked as glm() would
# (shared by vb(), the hierarchical front end and streamed chunks).
frame_extras <- function(mf, family, n, expo_scalar = NULL) {
  w <- as.vector(model.weights(mf))
  if (!is.null(w) && (!is.numeric(w) || any(!is.finite(w)) || any(w < 0)))
    stop("vb(): 'weights' must be finite and non-negative.", call. = FALSE)
  off <- as.vector(model.offset(mf))
  if (!is.null(off) && length(off) != n)
    stop(sprintf("vb(): 'offset' has length %d but the data have %d rows.", length(off), n), call. = FALSE)
  expo <- if (!is.null(expo_scalar)) expo_scalar else model.extract(mf, "exposure")
  if (!is.null(expo)) {
    if (family$family != "poisson")
      stop("vb(): 'exposure' is for poisson() models (bin width or exposure time); use 'offset' otherwise.", call. = FALSE)
    if (!is.numeric(expo) || any(!is.finite(expo)) || any(expo <= 0))
      stop("vb(): 'exposure' must be finite and positive (a bin width or exposure time).", call. = FALSE)
    expo <- rep_len(as.numeric(expo), n)
  }
  list(w = w, off = off, expo = expo)
}
