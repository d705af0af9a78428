#' A simulated neuron's spike counts
#'
#' One neuron recorded for 10 trials of 10 s, binned at 5 ms (20,000 bins).
#' Its rate is baseline_hz * exp(stim_gain * stim + post-spike filter), with a
#' refractory post-spike filter -3 exp(-(lag - 1)/2) over lags of 1-10 bins.
#' Made by `data-raw/neuron.R`; the ground truth is in `attr(neuron, "truth")`.
#'
#' @format A data frame with 20,000 rows:
#' \describe{
#'   \item{trial}{trial number, 1-10}
#'   \item{time}{start of the bin within its trial, in seconds}
#'   \item{stim}{the stimulus, a standardised smooth (AR(1), coefficient 0.95) signal}
#'   \item{spikes}{spike count in the bin}
#' }
#' @examples
#' fit <- vb(spikes ~ stim, data = neuron, family = poisson(), exposure = 0.005)
#' exp(coef(fit)[1])   # baseline rate in Hz (truth: 20, less refractoriness)
"neuron"
